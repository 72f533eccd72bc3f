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
from maskops.backends import Vis
from maskops.triton import tiles


class Layout(NamedTuple):
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]


class WeightMask(NamedTuple):
    kind: int                           # a tiles.* mask constant
    tensor: Optional[torch.Tensor]      # (G, N, K), or packed bits (G, N, ceil(K/32))
    plan: Optional[plan.TilePlan]       # tiles to visit; None: all of them


DENSE = WeightMask(tiles.NONE.value, None, None)


def weight_mask(vis: Vis, layout: Layout, bn: int, bk: int, *, packed: bool = False,
                tiles_plan: bool = True) -> WeightMask:
    """The mask operand for `vis` in `layout`, with a plan of (bn, bk) tiles for owner modes
    (unless tiles_plan is False).

    With per-row tasks the plan is the union over tasks (owner > 0) and each M-tile masks
    with its own task.  `packed` asks for the 1-bit visibility map (visible mode, one task).
    """
    if vis.mode == "dense":
        return DENSE
    if vis.mode == "mask":
        mask = layout.fn(vis.mask)
        return WeightMask((tiles.SCALE if mask.is_floating_point() else tiles.BINARY).value, mask, None)
    grouped = vis.row_task is not None
    tile_plan = None if not tiles_plan else plan.owner_plan(
        vis.owner, layout.name, layout.fn, "any" if grouped else vis.mode, vis.task, bn, bk)
    if vis.mode == "visible" and packed and not grouped and bk % 32 == 0:
        return WeightMask(tiles.BITS.value, plan.owner_bits(vis.owner, layout.name, layout.fn, vis.task),
                          tile_plan)
    kind = tiles.VISIBLE if vis.mode == "visible" else tiles.TRAINABLE
    return WeightMask(kind.value, plan.laid_out(vis.owner, layout.name, layout.fn), tile_plan)


def occupancy(vis: Vis, layout: Layout) -> int:
    """Quarters of 64x64 weight tiles the op must visit (0..4), -1 without an owner plan.
    Part of the autotuning key: a block-sparse owner wants other tiles than a dense one."""
    if vis.owner is None or vis.row_task is not None:
        return -1
    p = plan.owner_plan(vis.owner, layout.name, layout.fn, vis.mode, vis.task, 64, 64)
    groups = p.row_ptr.numel() - 1
    return round(4 * p.tiles.numel() / max(1, groups * p.k_tiles))
