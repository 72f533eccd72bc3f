"""The weight-side mask operand of a kernel: which tensor masks the weight, how, and
which tiles can be skipped.

A kernel sees the weight through a `Layout`: a function from any weight-shaped
tensor (weight, owner, mask) to a (G, N, K) tensor whose (N, K) plane is the
GEMM's B operand of group G.  Owner-derived tensors and plans are cached per
owner (maskops.plan); a floating or binary mask is laid out on every call.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

from maskops import plan
from maskops.modes import Mode
from maskops.selection import Vis


class Layout(NamedTuple):
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]


class WeightMask(NamedTuple):
    kind: int                           # the kernel's MASK: a Mode (bits: the 1-bit map)
    tensor: Optional[torch.Tensor]      # (G, N, K), or packed bits (G, N, ceil(K/32))
    plan: Optional[plan.TilePlan]       # tiles to visit; None: all of them


DENSE = WeightMask(int(Mode.dense), None, None)


def weight_mask(vis: Vis, layout: Layout, bn: int, bk: int, *, packed: bool = False,
                tiles_plan: bool = True) -> WeightMask:
    """The mask operand for `vis` in `layout`, with a plan of (bn, bk) tiles for owner modes
    (unless tiles_plan is False).

    With per-row tasks the plan is the union over tasks (owner > 0) and each M-tile masks
    with its own task.  `packed` asks for the 1-bit visibility map (visible mode, one task).
    """
    if vis.mode == Mode.dense:
        return DENSE
    if vis.mode == Mode.mask:
        return WeightMask(int(Mode.mask), layout.fn(vis.mask), None)
    grouped = vis.mixed
    tile_plan = None if not tiles_plan else plan.owner_plan(
        vis.owner, layout.name, layout.fn, None if grouped else vis.mode, vis.task, bn, bk)
    if vis.mode == Mode.visible and packed and not grouped and bk % 32 == 0:
        return WeightMask(int(Mode.bits), plan.owner_bits(vis.owner, layout.name, layout.fn, vis.task),
                          tile_plan)
    return WeightMask(int(vis.mode), plan.laid_out(vis.owner, layout.name, layout.fn), tile_plan)


def occupancy(vis: Vis, layout: Layout) -> int:
    """Quarters of 64x64 weight tiles the op must visit (0..4), -1 without an owner plan.
    Part of the autotuning key: a block-sparse owner wants other tiles than a dense one."""
    if vis.owner is None or vis.mixed:
        return -1
    p = plan.owner_plan(vis.owner, layout.name, layout.fn, vis.mode, vis.task, 64, 64)
    groups = p.row_ptr.numel() - 1
    return round(4 * p.tiles.numel() / max(1, groups * p.k_tiles))
