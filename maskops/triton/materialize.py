"""The masked weight as a tensor, for the library path of compute-bound shapes.

With a large batch a GEMM is compute-bound and the mask costs little once per call,
while a mask applied in registers inside the GEMM keeps Hopper's wgmma from running
asynchronously.  There the ops write `weight * mask` to a temporary with one Triton
pass (reading the 1-bit map or owner, never building a float mask) and call
cuBLAS/cuDNN on it; the autotuner picks this path (launch.MATERIALIZE) when it wins.
"""
import torch
import triton
import triton.language as tl

from maskops.selection import Vis
from maskops.triton import launch
from maskops.triton.masks import Layout, weight_mask
from maskops.triton.tiles import apply_keep, keep_of, load_raw_mask


@triton.jit
def _masked_weight_kernel(w_ptr, m_ptr, out_ptr, N, K, task, s_mn,
                          MASK: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    offs_n = (tl.program_id(0) * BN + tl.arange(0, BN)).to(tl.int64)
    k0 = tl.program_id(1) * BK
    offs_k = k0 + tl.arange(0, BK)
    ok = (offs_n < N)[:, None] & (offs_k < K)[None, :]
    offs = offs_n[:, None] * K + offs_k[None, :]
    full = k0 & 0  # no plan: no tile is known to be full
    w = tl.load(w_ptr + offs, mask=ok, other=0.0)
    raw = load_raw_mask(m_ptr, 0, offs_n, offs_n < N, k0, K, full, 0, s_mn, 1, MASK, BN, BK)
    tl.store(out_ptr + offs, apply_keep(w, keep_of(raw, full, task, MASK)), mask=ok)


FLAT = Layout("flat", lambda t: t.reshape(1, t.shape[0], -1))  # any weight as (N, rest)


def masked_weight(w: torch.Tensor, vis: Vis, packed: bool = True) -> torch.Tensor:
    """w * (the mask of vis, one task) as a new contiguous tensor; w itself when dense."""
    mask = weight_mask(vis, FLAT, 0, 32, packed=packed, tiles_plan=False)
    if mask.tensor is None:
        return w
    w = w.contiguous()
    out = torch.empty_like(w)
    n, k = w.shape[0], w[0].numel()
    bn, bk = (32, 32) if launch.interpreting() else (16, 256)
    _masked_weight_kernel[(launch.cdiv(n, bn), launch.cdiv(k, bk))](
        w, mask.tensor, out, n, k, vis.task, mask.tensor.stride(1), MASK=mask.kind, BN=bn, BK=bk)
    return out
