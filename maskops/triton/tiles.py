"""Tile-level building blocks shared by the GEMM kernels.

Weight-side tiles are (BN, BK) slices of a weight laid out as (G, N, K) with
arbitrary strides; activation-side tiles are (BM, BK) rows gathered from a
plain matrix or, for convolutions, from an NHWC tensor (implicit GEMM).
"""
import triton
import triton.language as tl

from maskops.modes import Mode

# How the weight tile is masked (MASK): the modes of csrc/modes.h.
DENSE = tl.constexpr(int(Mode.dense))
VISIBLE = tl.constexpr(int(Mode.visible))      # uint8 owner: 0 < owner <= task
TRAINABLE = tl.constexpr(int(Mode.trainable))  # uint8 owner: owner == task
MASK = tl.constexpr(int(Mode.mask))            # uint8 0/1 mask, or a floating one that multiplies
BITS = tl.constexpr(int(Mode.bits))            # 1-bit packed visibility, 32 columns per int32 word

# How activation rows are read (GATHER).
PLAIN = tl.constexpr(0)      # row-major matrix
IM2COL = tl.constexpr(1)     # conv input, NHWC; K = (kernel row, kernel col, channel)
DGRAD = tl.constexpr(2)      # conv output gradient, NHWC, read as the transposed conv


@triton.jit
def load_raw_mask(m_ptr, g, offs_n, n_ok, k0, Kg, full, s_mg, s_mn, s_mk,
                  MASK: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """The mask values of weight tile (g, offs_n, k0:k0+BK); nothing is read for a full tile.
    g and offs_n are int64, as every offset into a weight-sized array must be."""
    k_end = Kg * (1 - full)  # 0 for a full tile: every load masked off
    if MASK == BITS:
        offs_w = k0 // 32 + tl.arange(0, BK // 32)
        ok = n_ok[:, None] & (offs_w * 32 < k_end)[None, :]
        words = tl.load(m_ptr + g * s_mg + offs_n[:, None] * s_mn + offs_w[None, :], mask=ok, other=0)
        bits = (words[:, :, None] >> tl.arange(0, 32)[None, None, :]) & 1
        raw = tl.reshape(bits, (BN, BK))
    else:
        offs_k = k0 + tl.arange(0, BK)
        ok = n_ok[:, None] & (offs_k < k_end)[None, :]
        raw = tl.load(m_ptr + g * s_mg + offs_n[:, None] * s_mn + offs_k.to(tl.int64)[None, :] * s_mk,
                      mask=ok, other=0)
    return raw


@triton.jit
def keep_of(raw, full, task, MASK: tl.constexpr):
    """Which weights of the tile take part (bool), or a soft mask's scales, from raw mask values."""
    if MASK == VISIBLE:
        owner = raw.to(tl.int32)
        keep = ((owner > 0) & (owner <= task)) | (full != 0)
    elif MASK == TRAINABLE:
        keep = (raw.to(tl.int32) == task) | (full != 0)
    elif raw.dtype.is_floating():  # a soft mask: its values scale the weights
        keep = raw
    else:
        keep = (raw != 0) | (full != 0)
    return keep


@triton.jit
def apply_keep(w, keep):
    """w where keep (exact zeros elsewhere, so an unselected inf/nan never passes), or w
    scaled by a soft mask."""
    if keep.dtype.is_floating():
        out = w * keep.to(w.dtype)
    else:
        out = tl.where(keep, w, 0.0)
    return out


@triton.jit
def tile_rows(perm_ptr, table_ptr, pid_m, M, task, GROUPED: tl.constexpr, BM: tl.constexpr):
    """Rows of M-tile pid_m, which rows exist, and their task.

    GROUPED: rows were sorted by task; table_ptr holds (start, end, task) per M-tile
    over the sorted order and perm_ptr the original row of each sorted position."""
    if GROUPED:
        start = tl.load(table_ptr + 3 * pid_m)
        end = tl.load(table_ptr + 3 * pid_m + 1)
        t = tl.load(table_ptr + 3 * pid_m + 2)
        idx = start + tl.arange(0, BM)
        row_ok = idx < end
        rows = tl.load(perm_ptr + idx, mask=row_ok, other=0)
    else:
        rows = pid_m * BM + tl.arange(0, BM)
        row_ok = rows < M
        t = task
    return rows, row_ok, t


@triton.jit
def row_coords(rows, Hm, Wm, s0, s1, p0, p1, GATHER: tl.constexpr):
    """(image, y, x) of output rows for a conv gather: the top-left input pixel (IM2COL),
    or the padded input position (DGRAD).  Unused by PLAIN."""
    if GATHER == PLAIN:
        return rows.to(tl.int64), rows, rows
    image = rows // (Hm * Wm)
    pixel = rows % (Hm * Wm)
    y = pixel // Wm
    x = pixel % Wm
    if GATHER == IM2COL:
        y = y * s0 - p0
        x = x * s1 - p1
    else:
        y = y + p0
        x = x + p1
    return image.to(tl.int64), y, x


@triton.jit
def load_rows(a_ptr, rows, row_ok, image, y0, x0, offs_k, k_ok, c_off, s_am,
              Hs, Ws, Cs, KW, Cg, s0, s1, d0, d1, GATHER: tl.constexpr):
    """(BM, BK) activation tile: A[rows, offs_k], A being the (implicit) GEMM operand."""
    if GATHER == PLAIN:
        ptrs = a_ptr + rows.to(tl.int64)[:, None] * s_am + offs_k[None, :]
        ok = row_ok[:, None] & k_ok[None, :]
    else:
        r = offs_k // (KW * Cg)
        s = (offs_k // Cg) % KW
        c = offs_k % Cg
        if GATHER == IM2COL:
            iy = y0[:, None] + r[None, :] * d0
            ix = x0[:, None] + s[None, :] * d1
            ok = (iy >= 0) & (iy < Hs) & (ix >= 0) & (ix < Ws)
        else:
            ty = y0[:, None] - r[None, :] * d0
            tx = x0[:, None] - s[None, :] * d1
            ok = (ty >= 0) & (tx >= 0) & (ty % s0 == 0) & (tx % s1 == 0)
            iy = ty // s0
            ix = tx // s1
            ok = ok & (iy < Hs) & (ix < Ws)
        ok = ok & row_ok[:, None] & k_ok[None, :]
        iy = tl.where(ok, iy, 0)
        ix = tl.where(ok, ix, 0)
        ptrs = a_ptr + ((image[:, None] * Hs + iy) * Ws + ix) * Cs + c_off + c[None, :]
    return tl.load(ptrs, mask=ok, other=0.0)


@triton.jit
def load_out_mask(om_ptr, rows, row_ok, cols, n_ok, s_om, om_div):
    """out_mask at (rows, cols): om[row // om_div, col] (s_om = 0 for a per-channel mask)."""
    ptrs = om_ptr + (rows // om_div).to(tl.int64)[:, None] * s_om + cols[None, :]
    return tl.load(ptrs, mask=row_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def store_output(acc, c_ptr, rows, row_ok, cols, n_ok, s_cm, bias_ptr, om,
                 HAS_BIAS: tl.constexpr, HAS_OM: tl.constexpr):
    """(acc + bias) * out_mask, in c's dtype; 0 where out_mask is 0 (even for NaN / inf)."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_OM:
        acc = tl.where(om == 0.0, 0.0, acc * om)
    ptrs = c_ptr + rows.to(tl.int64)[:, None] * s_cm + cols[None, :]
    tl.store(ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])
