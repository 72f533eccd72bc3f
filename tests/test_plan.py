"""Tile plans and the 1-bit visibility map (maskops/plan.py)."""
import gc

import pytest
import torch

from maskops import _C, plan, reference
from maskops.modes import Mode


def _unpack(words: torch.Tensor, k: int) -> torch.Tensor:
    bits = (words[..., None].to(torch.int64) >> torch.arange(32)) & 1
    return bits.flatten(-2)[..., :k].bool(), bits.flatten(-2)[..., k:]


@pytest.mark.parametrize("task", [1, 3])
def test_pack_visible_bit_j_of_word_w_is_column_32w_plus_j(task):
    owner = torch.randint(0, 5, (7, 70), dtype=torch.uint8)
    words = plan.pack_visible(owner, task)
    assert words.dtype == torch.int32 and words.shape == (7, 3)
    visible, padding = _unpack(words, 70)
    assert torch.equal(visible, reference.visible(owner, task))
    assert not padding.any()


def test_pack_visible_uses_the_sign_bit():
    owner = torch.zeros(2, 32, dtype=torch.uint8)
    owner[0, 31] = 1
    owner[1] = 1
    assert plan.pack_visible(owner, 1).flatten().tolist() == [-2 ** 31, -1]


def _brute_force(keep, bn, bk):
    groups, n, k = keep.shape
    rows, tiles = [], []
    for g in range(groups):
        for nt in range(-(-n // bn)):
            row = []
            for kt in range(-(-k // bk)):
                tile = keep[g, nt * bn:(nt + 1) * bn, kt * bk:(kt + 1) * bk]
                if tile.any():
                    row.append(2 * kt + int(tile.all()))
                    flat = (g * -(-n // bn) + nt) * -(-k // bk) + kt
                    tiles.append(2 * flat + int(tile.all()))
            rows.append(row)
    return rows, tiles


def test_tile_plan_lists_nonempty_tiles_and_marks_full_ones():
    keep = torch.rand(2, 37, 70) < 0.5
    keep[0, :16, :32] = True    # a full tile
    keep[1, 16:32, :] = False   # an empty row of tiles
    keep[0, 32:, 64:] = True    # a full edge tile (partial in size)
    p = plan.tile_plan(keep, 16, 32)
    rows, tiles = _brute_force(keep, 16, 32)
    assert (p.n_tiles, p.k_tiles) == (3, 3)
    got = [p.k_entries[p.row_ptr[r]:p.row_ptr[r + 1]].tolist() for r in range(len(rows))]
    assert got == rows
    assert p.tiles.tolist() == tiles
    assert p.k_entries.dtype == p.row_ptr.dtype == p.tiles.dtype == torch.int32


def test_inexact_plan_marks_no_tile_full():
    keep = torch.ones(1, 20, 20, dtype=torch.bool)
    assert not (plan.tile_plan(keep, 16, 16, exact=False).tiles & 1).any()
    assert (plan.tile_plan(keep, 16, 16).tiles & 1).all()


def _layout(t):
    return t.unsqueeze(0)


def test_plan_is_cached_per_owner_task_and_rebuilt_when_the_owner_changes():
    owner = torch.randint(0, 3, (40, 40), dtype=torch.uint8)
    first = plan.owner_plan(owner, "m", _layout, Mode.visible, 1, 16, 16)
    assert plan.owner_plan(owner, "m", _layout, Mode.visible, 1, 16, 16) is first
    assert plan.owner_plan(owner, "m", _layout, Mode.visible, 2, 16, 16) is not first
    owner.zero_()  # in place: the version counter moves
    rebuilt = plan.owner_plan(owner, "m", _layout, Mode.visible, 1, 16, 16)
    assert rebuilt is not first and rebuilt.tiles.numel() == 0


def test_trainable_plan_covers_exactly_the_owned_tiles():
    owner = torch.zeros(32, 32, dtype=torch.uint8)
    owner[:16, 16:] = 2
    owner[16:, :16] = 1
    p = plan.owner_plan(owner, "m", _layout, Mode.trainable, 2, 16, 16)
    assert p.tiles.tolist() == [2 * 1 + 1]  # tile (0, 1), full


def test_cache_entry_dies_with_its_owner():
    gc.collect()  # owners of earlier tests
    owner = torch.ones(8, 8, dtype=torch.uint8)
    plan.owner_bits(owner, "m", _layout, 1)
    size = len(plan._cache)
    del owner
    gc.collect()
    assert len(plan._cache) == size - 1


def test_copying_layouts_are_cached_and_views_are_not():
    owner = torch.randint(0, 3, (4, 3, 2, 2), dtype=torch.uint8)
    copy = plan.laid_out(owner, "c", lambda t: t.permute(0, 2, 3, 1).reshape(1, 4, -1))
    assert plan.laid_out(owner, "c", lambda t: t.permute(0, 2, 3, 1).reshape(1, 4, -1)) is copy
    assert torch.equal(copy, owner.permute(0, 2, 3, 1).reshape(1, 4, -1))
    view = plan.laid_out(owner, "v", lambda t: t.reshape(1, 4, -1))
    assert view.data_ptr() == owner.data_ptr()


def test_inference_tensor_owner_builds_without_cache():
    with torch.inference_mode():
        owner = torch.ones(16, 16, dtype=torch.uint8)
    p = plan.owner_plan(owner, "m", _layout, Mode.visible, 1, 16, 16)
    assert p.tiles.tolist() == [1]


def test_native_bit_map_cache_follows_the_owner():
    """The C++ cache the cuda backend reads its 1-bit maps from (python/owner_cache.cpp)."""
    owner = torch.randint(0, 4, (5, 70), dtype=torch.uint8)
    first = _C.cached_visible_bits(owner, 2)
    assert _C.cached_visible_bits(owner, 2).data_ptr() == first.data_ptr()  # built once
    assert torch.equal(first, plan.pack_visible(owner, 2))
    assert not torch.equal(_C.cached_visible_bits(owner, 1), first)
    owner[:, :40] = 3  # a new version: rebuilt
    again = _C.cached_visible_bits(owner, 2)
    assert torch.equal(again, plan.pack_visible(owner, 2)) and not torch.equal(again, first)


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (2, 31), (2, 33)])
def test_pack_visible_shapes(shape):
    owner = torch.randint(0, 3, shape, dtype=torch.uint8)
    words = plan.pack_visible(owner, 1)
    assert words.shape == (shape[0], -(-shape[1] // 32)) and words.dtype == torch.int32
    visible, padding = _unpack(words, shape[1])
    assert torch.equal(visible, reference.visible(owner, 1)) and not padding.any()
