"""Rows of a mixed-task batch grouped by task, for one-launch grouped GEMMs.

Rows come sorted by task (the batch's routing, maskops.routing) and are cut into M-tiles
that hold one task each; `_tile_table_kernel` builds the table of those tiles in one small
launch, without reading anything back to the host (no sync, CUDA-graph capturable).
"""
import torch
import triton
import triton.language as tl

from maskops.modes import TASK_IDS
from maskops.triton import launch


@triton.jit
def _tile_table_kernel(task_ptr, table_ptr, count_ptr, rows, n_table, BM,
                       BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr, TASKS: tl.constexpr):
    counts = tl.zeros((TASKS,), dtype=tl.int32)
    for r0 in range(0, rows, BLOCK_R):
        offs = r0 + tl.arange(0, BLOCK_R)
        task = tl.load(task_ptr + offs, mask=offs < rows, other=0)
        counts += tl.histogram(task, TASKS, mask=offs < rows)
    tiles = (counts + BM - 1) // BM
    tile_end = tl.cumsum(tiles, 0)
    used_tiles = tl.sum(tiles, 0)
    tl.store(count_ptr, used_tiles)
    ids = tl.arange(0, TASKS)
    for i0 in range(0, n_table, BLOCK_T):
        i = i0 + tl.arange(0, BLOCK_T)
        # Tasks whose tiles all come before tile i; tile i belongs to the first task after them.
        before = tile_end[None, :] <= i[:, None]
        task = tl.sum(before.to(tl.int32), 1)
        first_row = tl.sum(tl.where(before, counts[None, :], 0), 1)
        first_tile = tl.sum(tl.where(before, tiles[None, :], 0), 1)
        rows_of_task = tl.sum(tl.where(ids[None, :] == task[:, None], counts[None, :], 0), 1)
        start = first_row + (i - first_tile) * BM
        end = tl.minimum(start + BM, first_row + rows_of_task)
        used = i < used_tiles
        ok = i < n_table
        tl.store(table_ptr + 3 * i, tl.where(used, start, 0), mask=ok)
        tl.store(table_ptr + 3 * i + 1, tl.where(used, end, 0), mask=ok)
        tl.store(table_ptr + 3 * i + 2, tl.where(used, task, 0), mask=ok)


def row_groups(row_task: torch.Tensor, row_order: torch.Tensor, bm: int):
    """(perm, table, count) for rows with tasks `row_task` (int32, values 1..255) whose
    stable order by task is `row_order`.

    perm (rows,) int64: the original row of each position in task order (row_order).
    table (T, 3) int32: (start, end, task) of each M-tile over positions in task order; T is
        an upper bound (tiles of full tasks plus one partial tile per task), unused tiles are
        (0, 0, 0) at the end.  count (1,) int32: the tiles in use.
    """
    rows = row_task.shape[0]
    n_table = launch.cdiv(rows, bm) + min(rows, TASK_IDS - 1)
    table = torch.empty((n_table, 3), dtype=torch.int32, device=row_task.device)
    count = torch.empty(1, dtype=torch.int32, device=row_task.device)
    _tile_table_kernel[(1,)](row_task, table, count, rows, n_table, bm,
                             BLOCK_R=1024, BLOCK_T=64, TASKS=TASK_IDS)
    if row_task.device.type == "cpu":  # reading the count back costs nothing here: drop unused tiles
        table = table[:int(count)]
    return row_order, table, count
