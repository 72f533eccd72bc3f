"""Masked GEMM kernels and the linear ops built on them.

`gemm`:  out[m, g*N + n] = sum_k A[m, k] * (B * mask)[g, n, k]  (+ bias) (* out_mask)
`wgrad`: dW[g, n, k]     = sum_m G[m, g*N + n] * A[m, k], restricted by the mask
A is a plain matrix or an implicit im2col of an NHWC tensor (see tiles.load_rows),
so convolutions (maskops.triton.conv) run through the same two kernels.

The mask is applied to the weight tile in registers, right before tl.dot.  A tile
plan (maskops.plan) lists the K-tiles worth visiting per weight row-tile (GEMM) or
the output tiles worth computing (wgrad); a tile whose out_mask is all zero skips its
K loop.  Rows with different tasks are sorted by task into single-task M-tiles, so a
mixed batch is one launch.  For compute-bound shapes the autotuner may instead pick
launch.MATERIALIZE: the masked weight in a temporary, then cuBLAS (maskops.triton.materialize).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from maskops.selection import Vis
from maskops.triton import launch
from maskops.triton.groups import row_groups
from maskops.triton.masks import Layout, occupancy, weight_mask
from maskops.triton.materialize import masked_weight
from maskops.triton.tiles import (DENSE, PLAIN, apply_keep, keep_of, load_out_mask, load_raw_mask,
                                  load_rows, row_coords, store_output, tile_rows)


class Geometry(NamedTuple):
    """Implicit-GEMM view of an NHWC tensor: source (Hs, Ws, Cs), output grid (Hm, Wm),
    kernel width KW, channels per group Cg, stride, padding, dilation."""
    Hs: int = 1
    Ws: int = 1
    Cs: int = 1
    Hm: int = 1
    Wm: int = 1
    KW: int = 1
    Cg: int = 1
    s0: int = 1
    s1: int = 1
    p0: int = 0
    p1: int = 0
    d0: int = 1
    d1: int = 1


@triton.jit
def _gemm_kernel(a_ptr, b_ptr, m_ptr, c_ptr, bias_ptr, om_ptr, perm_ptr, table_ptr, kptr_ptr, kent_ptr,
                 ws_ptr, count_ptr, M, Ng, Kg, task, n_tiles,
                 s_am, s_bg, s_bn, s_bk, s_mg, s_mn, s_mk, s_cm, s_ws, s_om, om_div,
                 Hs, Ws, Cs, Hm, Wm, KW, Cg, s0, s1, p0, p1, d0, d1,
                 GATHER: tl.constexpr, MASK: tl.constexpr, PLAN: tl.constexpr, GROUPED: tl.constexpr,
                 HAS_BIAS: tl.constexpr, HAS_OM: tl.constexpr, SPLIT_K: tl.constexpr,
                 SWAP_AB: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    # Offsets into the weight are int64: a weight may hold more than 2^31 elements.
    g = (pid_n // n_tiles).to(tl.int64)
    offs_n = ((pid_n % n_tiles) * BN + tl.arange(0, BN)).to(tl.int64)
    n_ok = offs_n < Ng
    cols = g * Ng + offs_n
    rows, row_ok, t = tile_rows(perm_ptr, table_ptr, pid_m, M, task, GROUPED, BM)
    live = tl.max(row_ok.to(tl.int32), 0) > 0
    om = 0.0
    if HAS_OM:
        om = load_out_mask(om_ptr, rows, row_ok, cols, n_ok, s_om, om_div)
        live = live & (tl.max(tl.max(tl.abs(om), 1), 0) > 0)

    if PLAN:
        first = tl.load(kptr_ptr + pid_n)
        count = tl.load(kptr_ptr + pid_n + 1) - first
    else:
        first = 0
        count = tl.cdiv(Kg, BK)
    lo = first + count * pid_k // SPLIT_K
    hi = first + count * (pid_k + 1) // SPLIT_K
    hi = tl.where(live, hi, lo)
    image, y0, x0 = row_coords(rows, Hm, Wm, s0, s1, p0, p1, GATHER)

    if SWAP_AB:
        acc = tl.zeros((BN, BM), dtype=tl.float32)
    else:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
    for i in range(lo, hi):
        if PLAN:
            entry = tl.load(kent_ptr + i)
            k0 = (entry >> 1) * BK
            full = entry & 1
        else:
            k0 = i * BK
            full = i & 0  # no plan: no tile is known to be full
        offs_k = k0 + tl.arange(0, BK)
        k_ok = offs_k < Kg
        a = load_rows(a_ptr, rows, row_ok, image, y0, x0, offs_k, k_ok, g * Cg, s_am,
                      Hs, Ws, Cs, KW, Cg, s0, s1, d0, d1, GATHER)
        w = tl.load(b_ptr + g * s_bg + offs_n[:, None] * s_bn + offs_k.to(tl.int64)[None, :] * s_bk,
                    mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if MASK != DENSE:
            raw = load_raw_mask(m_ptr, g, offs_n, n_ok, k0, Kg, full, s_mg, s_mn, s_mk, MASK, BN, BK)
            w = apply_keep(w, keep_of(raw, full, t, MASK))
        if SWAP_AB:
            acc = tl.dot(w, tl.trans(a), acc)
        else:
            acc = tl.dot(a, tl.trans(w), acc)
    if SWAP_AB:
        acc = tl.trans(acc)

    if SPLIT_K == 1:
        store_output(acc, c_ptr, rows, row_ok, cols, n_ok, s_cm, bias_ptr, om, HAS_BIAS, HAS_OM)
    else:
        # Split K: store an fp32 partial; the last of the SPLIT_K programs of this output tile
        # (counted on a self-resetting counter) sums the partials and runs the epilogue.
        ws_ptrs = ws_ptr + rows.to(tl.int64)[:, None] * s_cm + cols[None, :]
        ok = row_ok[:, None] & n_ok[None, :]
        tl.store(ws_ptrs + pid_k * s_ws, acc, mask=ok)
        tl.debug_barrier()
        tile = pid_m * tl.num_programs(1) + pid_n
        if tl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu") == SPLIT_K - 1:
            total = tl.zeros((BM, BN), dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):
                total += tl.load(ws_ptrs + s * s_ws, mask=ok, other=0.0, cache_modifier=".cg")
            store_output(total, c_ptr, rows, row_ok, cols, n_ok, s_cm, bias_ptr, om, HAS_BIAS, HAS_OM)
            tl.atomic_xchg(count_ptr + tile, 0)


@triton.jit
def _wgrad_kernel(g_ptr, x_ptr, m_ptr, dw_ptr, perm_ptr, table_ptr, count_ptr, tiles_ptr,
                  M, Ng, Kg, task, n_tiles, k_tiles,
                  s_gm, s_xm, s_mg, s_mn, s_mk, s_dg, s_dn,
                  Hs, Ws, Cs, Hm, Wm, KW, Cg, s0, s1, p0, p1, d0, d1,
                  GATHER: tl.constexpr, MASK: tl.constexpr, PLAN: tl.constexpr, GROUPED: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    if PLAN:
        entry = tl.load(tiles_ptr + tl.program_id(0))
        flat = entry >> 1
        full = entry & 1
    else:
        flat = tl.program_id(0)
        full = flat & 0  # no plan: no tile is known to be full
    k0 = (flat % k_tiles) * BK
    g = (flat // k_tiles // n_tiles).to(tl.int64)
    offs_n = ((flat // k_tiles % n_tiles) * BN + tl.arange(0, BN)).to(tl.int64)
    offs_k = k0 + tl.arange(0, BK)
    n_ok = offs_n < Ng
    k_ok = offs_k < Kg
    raw = 0
    if MASK != DENSE:
        raw = load_raw_mask(m_ptr, g, offs_n, n_ok, k0, Kg, full, s_mg, s_mn, s_mk, MASK, BN, BK)
    if GROUPED:
        m_tiles = tl.load(count_ptr)
    else:
        m_tiles = tl.cdiv(M, BM)

    acc = tl.zeros((BN, BK), dtype=tl.float32)
    for i in range(0, m_tiles):
        rows, row_ok, t = tile_rows(perm_ptr, table_ptr, i, M, task, GROUPED, BM)
        image, y0, x0 = row_coords(rows, Hm, Wm, s0, s1, p0, p1, GATHER)
        grad = tl.load(g_ptr + rows.to(tl.int64)[:, None] * s_gm + (g * Ng + offs_n)[None, :],
                       mask=row_ok[:, None] & n_ok[None, :], other=0.0)
        a = load_rows(x_ptr, rows, row_ok, image, y0, x0, offs_k, k_ok, g * Cg, s_xm,
                      Hs, Ws, Cs, KW, Cg, s0, s1, d0, d1, GATHER)
        part = tl.dot(tl.trans(grad), a)
        if GROUPED and MASK != DENSE:  # each M-tile has its own task
            part = apply_keep(part, keep_of(raw, full, t, MASK))
        acc += part
    if (not GROUPED) and MASK != DENSE:
        acc = apply_keep(acc, keep_of(raw, full, task, MASK))
    tl.store(dw_ptr + g * s_dg + offs_n[:, None] * s_dn + offs_k[None, :],
             acc.to(dw_ptr.dtype.element_ty), mask=n_ok[:, None] & k_ok[None, :])


def _rows(vis: Vis, bm: int):
    """(perm, table, count) for per-row tasks; None otherwise."""
    if not vis.mixed:
        return None, None, None
    return row_groups(vis.row_task, vis.row_order, bm)


def gemm(a: torch.Tensor, weight: torch.Tensor, vis: Vis, layout: Layout, out: torch.Tensor,
         cfg: launch.Config, *, gather: int = PLAIN.value, geometry: Geometry = Geometry(),
         bias=None, out_mask=None, om_div: int = 1, packed: bool = False) -> torch.Tensor:
    """Fill out (rows, G*N); see the module docstring.  A plain `a` is (rows, K).
    Pointers a variant does not read are passed as None (cheaper launches)."""
    b = layout.fn(weight)
    groups, ng, kg = b.shape
    rows = out.shape[0]
    mask = weight_mask(vis, layout, cfg.bn, cfg.bk, packed=packed)
    perm, table, _ = _rows(vis, cfg.bm)
    grid_m = launch.cdiv(rows, cfg.bm) if table is None else table.shape[0]
    n_tiles = launch.cdiv(ng, cfg.bn)
    split = cfg.split_k
    ws = counters = None
    if split > 1:
        ws = out.new_empty((split,) + out.shape, dtype=torch.float32)
        counters = _counters(out.device, grid_m * groups * n_tiles)
    plan = mask.plan
    _gemm_kernel[(grid_m, groups * n_tiles, split)](
        a, b, mask.tensor, out, bias, out_mask, perm, table,
        None if plan is None else plan.row_ptr, None if plan is None else plan.k_entries,
        ws, counters, rows, ng, kg, vis.task, n_tiles,
        a.stride(0) if gather == PLAIN.value else 0, *b.stride(), *_strides(mask.tensor), out.stride(0),
        rows * out.shape[1], 0 if out_mask is None or out_mask.dim() == 1 else out_mask.stride(0),
        om_div, *geometry,
        GATHER=gather, MASK=mask.kind, PLAN=plan is not None, GROUPED=table is not None,
        HAS_BIAS=bias is not None, HAS_OM=out_mask is not None, SPLIT_K=split, SWAP_AB=cfg.swap_ab,
        BM=cfg.bm, BN=cfg.bn, BK=cfg.bk, num_warps=cfg.warps, num_stages=cfg.stages)
    if gather == PLAIN.value and plan is not None \
            and plan.k_entries.numel() < (plan.row_ptr.numel() - 1) * plan.k_tiles:
        _nan_where_skipped(out, a, plan, cfg.bn, ng, out_mask)
    return out


def _nan_where_skipped(out, a, plan, bn: int, ng: int, out_mask) -> None:
    """NaN in the columns whose weight tiles the plan skipped, for rows of `a` holding a NaN or
    an infinity: there dense math on the masked weight gives NaN (NaN * 0, inf * 0), and the
    skipped tiles never met the row (a channel whose out_mask is 0 stays 0).  Device-side, no
    synchronization; run only when the plan skips something."""
    visited = plan.row_ptr[1:] - plan.row_ptr[:-1]  # K-tiles of each (group, N-tile)
    groups = visited.numel() // plan.n_tiles
    skipped = (visited < plan.k_tiles).repeat_interleave(bn).view(groups, -1)[:, :ng].reshape(1, -1)
    if out_mask is not None:
        skipped = skipped & (out_mask != 0).reshape(-1, out.shape[1])
    rows = ~torch.isfinite(a).all(1)
    out.masked_fill_(rows[:, None] & skipped, float("nan"))


def _strides(t) -> tuple:
    return (0, 0, 0) if t is None else t.stride()


_counter_cache: dict = {}


def _counters(device: torch.device, size: int) -> torch.Tensor:
    """Zeroed int32 arrival counters for split-K tiles, one buffer per device and stream.
    Kernels leave them zeroed, so they are allocated once and reused (under CUDA-graph
    capture the graph gets its own, zeroed on each replay)."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return torch.zeros(size, dtype=torch.int32, device=device)
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    counters = _counter_cache.get((device, stream))
    if counters is None or counters.numel() < size:
        counters = torch.zeros(max(size, 4096), dtype=torch.int32, device=device)
        _counter_cache[(device, stream)] = counters
    return counters


def wgrad(grad: torch.Tensor, x: torch.Tensor, vis: Vis, layout: Layout, shape, cfg: launch.Config, *,
          gather: int = PLAIN.value, geometry: Geometry = Geometry()) -> torch.Tensor:
    """dW (G, N, K) in `layout` from grad (rows, G*N) and x (plain (rows, K), or NHWC)."""
    groups, ng, kg = shape
    mask = weight_mask(vis, layout, cfg.bn, cfg.bk)
    plan = mask.plan
    # Tiles the plan leaves out hold no trainable weight: zeros, never computed.
    out = (torch.zeros if plan is not None else torch.empty)(shape, dtype=x.dtype, device=x.device)
    n_tiles, k_tiles = launch.cdiv(ng, cfg.bn), launch.cdiv(kg, cfg.bk)
    programs = plan.tiles.numel() if plan is not None else groups * n_tiles * k_tiles
    if programs == 0:
        return out
    perm, table, count = _rows(vis, cfg.bm)
    _wgrad_kernel[(programs,)](
        grad, x, mask.tensor, out, perm, table, count, None if plan is None else plan.tiles,
        grad.shape[0], ng, kg, vis.task, n_tiles, k_tiles,
        grad.stride(0), x.stride(0) if gather == PLAIN.value else 0, *_strides(mask.tensor),
        out.stride(0), out.stride(1), *geometry,
        GATHER=gather, MASK=mask.kind, PLAN=plan is not None, GROUPED=table is not None,
        BM=cfg.bm, BN=cfg.bn, BK=cfg.bk, num_warps=cfg.warps, num_stages=cfg.stages)
    return out


def times_out_mask(y: torch.Tensor, out_mask) -> torch.Tensor:
    """y * out_mask in place (out_mask broadcast to y), exactly 0 where out_mask is 0, as the
    kernels' epilogue gives."""
    return y if out_mask is None else y.mul_(out_mask).masked_fill_(out_mask == 0, 0)


# ----------------------------------------------------------------------------- linear

LINEAR = Layout("linear", lambda t: t.unsqueeze(0))             # B = weight (N, K)
LINEAR_T = Layout("linear_t", lambda t: t.t().unsqueeze(0))     # B = weight^T (K, N)


def linear_forward(x, w, vis: Vis, bias=None, out_mask=None, *, config=None, packed=True):
    """y = x @ (w masked by vis)^T + bias, times out_mask.  packed: 1-bit map for visible mode."""
    m, k = x.shape
    out = x.new_empty((m, w.shape[0]))

    def run(cfg):
        if cfg.materialize:
            return times_out_mask(F.linear(x, masked_weight(w, vis, packed), bias), out_mask)
        return gemm(x, w, vis, LINEAR, out, cfg, bias=bias, out_mask=out_mask, packed=packed)
    return launch.choose(
        launch.tune_key("linear_forward", m, x.dtype, vis, *w.shape, occupancy(vis, LINEAR), packed,
                        out_mask is not None),
        launch.gemm_configs(m, w.shape[0], k, x.dtype, x.device, vis.mixed), run, config)


def linear_grad_input(grad, w, vis: Vis, *, config=None):
    """grad (M, N) @ (w masked by vis) (N, K)."""
    m, n = grad.shape
    out = grad.new_empty((m, w.shape[1]))

    def run(cfg):
        if cfg.materialize:
            return grad @ masked_weight(w, vis)
        return gemm(grad, w, vis, LINEAR_T, out, cfg)
    return launch.choose(
        launch.tune_key("linear_grad_input", m, grad.dtype, vis, *w.shape, occupancy(vis, LINEAR_T)),
        launch.gemm_configs(m, w.shape[1], n, grad.dtype, grad.device, vis.mixed),
        run, config)


def linear_grad_weight(grad, x, vis: Vis, *, config=None):
    """grad^T @ x (N, K), zero outside the weights vis lets train."""
    shape = (1, grad.shape[1], x.shape[1])

    def run(cfg):
        if cfg.materialize:
            return masked_weight(grad.t() @ x, vis)
        return wgrad(grad, x, vis, LINEAR, shape, cfg).squeeze(0)
    return launch.choose(
        launch.tune_key("linear_grad_weight", x.shape[0], x.dtype, vis, *shape, occupancy(vis, LINEAR)),
        launch.wgrad_configs(x.shape[0], x.dtype, vis.mixed), run, config)
