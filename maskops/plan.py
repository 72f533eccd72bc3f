"""Per-task tile plans: which weight tiles a task can see, built once per owner map.

A kernel that multiplies by `weight * keep` need not read a tile of the weight
where `keep` is all false, and need not read the mask of a tile where it is all
true.  A `TilePlan` lists, for a weight matrix cut into (bn, bk) tiles, the
non-empty tiles and whether each one is full.  Plans and packed maps are cached
per owner tensor and rebuilt only when the owner changes (its version counter
moves) -- the op layer passes the same owner object on every call, so after the
first call a plan costs a dictionary lookup.

The packed visibility map (`pack_visible`) is the 1-bit format shared with the
CUDA backend: bit j of word [n, w] is visible(owner[n, 32*w + j], task).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from maskops import reference
from maskops.modes import Mode


class TilePlan(NamedTuple):
    """Non-empty tiles of a (G, N, K) mask cut into (bn, bk) tiles, row-major.

    Each entry packs a tile index and a `full` bit as 2 * index + full.
        row_ptr  int32 (G * n_tiles + 1,): the K-tiles of row tile r are
                 k_entries[row_ptr[r]:row_ptr[r + 1]]
        k_entries int32: 2 * k_tile + full, for a kernel looping over K
        tiles     int32: 2 * ((g * n_tiles + n_tile) * k_tiles + k_tile) + full,
                 for a kernel with one program per output tile
    """
    row_ptr: torch.Tensor
    k_entries: torch.Tensor
    tiles: torch.Tensor
    n_tiles: int
    k_tiles: int


def tile_plan(keep: torch.Tensor, bn: int, bk: int, exact: bool = True) -> TilePlan:
    """The plan of a bool mask `keep` (G, N, K).  With exact=False no tile is marked full
    (for kernels that apply a different mask than `keep`, which only bounds it)."""
    groups, n, k = keep.shape
    n_tiles, k_tiles = -(-n // bn), -(-k // bk)
    pad = (0, k_tiles * bk - k, 0, n_tiles * bn - n)

    def per_tile(value: torch.Tensor, fill: int) -> torch.Tensor:
        value = F.pad(value.to(torch.uint8), pad, value=fill)
        return value.view(groups, n_tiles, bn, k_tiles, bk).transpose(2, 3).flatten(3)

    any_kept = per_tile(keep, 0).amax(-1).bool()
    full = per_tile(keep, 1).amin(-1).bool() if exact else torch.zeros_like(any_kept)
    flat = any_kept.flatten().nonzero().flatten()
    entry_full = full.flatten()[flat].to(torch.int32)
    counts = torch.bincount(flat // k_tiles, minlength=groups * n_tiles)
    row_ptr = F.pad(torch.cumsum(counts, 0), (1, 0)).to(torch.int32)
    k_entries = ((flat % k_tiles) * 2).to(torch.int32) + entry_full
    tiles = (flat * 2).to(torch.int32) + entry_full
    return TilePlan(row_ptr, k_entries, tiles, n_tiles, k_tiles)


def pack_visible(owner: torch.Tensor, task: int) -> torch.Tensor:
    """1-bit visibility map (N, ceil(K/32)) int32 of a 2-D owner map for `task`."""
    return torch.ops.maskops.pack_visible(owner, task)


# ----------------------------------------------------------------------------- cache

# owner -> (owner._version when filled, {key: value}).  Values must not hold a
# reference to the owner itself (no views of it), or the entry would never die.
_cache = WeakIdKeyDictionary()

Layout = Callable[[torch.Tensor], torch.Tensor]  # weight-shaped tensor -> (G, N, K)


def cached(owner: torch.Tensor, key, build: Callable[[], object]):
    """build() once per (owner object, owner version, key)."""
    if owner.is_inference():  # no version counter to tell us when it changes
        return build()
    entry = _cache.get(owner)
    if entry is None or entry[0] != owner._version:
        entry = (owner._version, {})
        _cache[owner] = entry
    if key not in entry[1]:
        entry[1][key] = build()
    return entry[1][key]


def laid_out(owner: torch.Tensor, name: str, layout: Layout) -> torch.Tensor:
    """layout(owner), cached when the layout copies (a view is free, and must not be
    cached: it would keep the owner alive)."""
    def build():
        laid = layout(owner)
        shares = laid.untyped_storage().data_ptr() == owner.untyped_storage().data_ptr()
        return None if shares else laid.contiguous()
    copy = cached(owner, ("layout", name), build)
    return layout(owner) if copy is None else copy


def _keep(owner: torch.Tensor, mode: Optional[Mode], task: int) -> torch.Tensor:
    if mode == Mode.visible:
        return reference.visible(owner, task)
    if mode == Mode.trainable:
        return reference.trainable(owner, task)
    return owner > 0  # visible to some task: bounds every task's mask


def owner_plan(owner: torch.Tensor, name: str, layout: Layout, mode: Optional[Mode], task: int,
               bn: int, bk: int) -> TilePlan:
    """Tile plan of `mode` (visible or trainable) for `task`, in layout `name`; with mode
    None, of the weights any task sees (rows of several tasks)."""
    def build():
        return tile_plan(_keep(laid_out(owner, name, layout), mode, task), bn, bk,
                         exact=mode is not None)
    return cached(owner, ("plan", name, mode, task if mode is not None else 0, bn, bk), build)


def owner_bits(owner: torch.Tensor, name: str, layout: Layout, task: int) -> torch.Tensor:
    """pack_visible of the laid-out owner, (G, N, ceil(K/32)), cached per task."""
    def build():
        laid = laid_out(owner, name, layout)
        groups, n, k = laid.shape
        return pack_visible(laid.reshape(groups * n, k), task).view(groups, n, -1)
    return cached(owner, ("bits", name, task), build)
