"""`Vis`: which weights take part in a product, as the Python kernels (the torch and triton
backends) receive it from an op.

    mode   a `maskops.modes.Mode`: dense, visible (0 < owner <= task), trainable
           (owner == task) or mask (weight * mask: uint8 0/1 or floating)
    owner  uint8, weight-shaped (visible, trainable);  mask  weight-shaped (mask)
    task   the task of every row, unless the rows carry their own:
    row_task, row_order, row_offsets
           per-row tasks of a mixed-task batch: int32 task of each row, rows sorted by task
           (int64) and, on the CPU, the offsets of each task's rows in that order -- a
           `maskops.routing.Routing` over rows rather than samples.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from maskops.modes import Mode
from maskops.routing import Routing


class Vis(NamedTuple):
    mode: Mode
    owner: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    task: int = 1
    row_task: Optional[torch.Tensor] = None
    row_order: Optional[torch.Tensor] = None
    row_offsets: Optional[torch.Tensor] = None

    @property
    def mixed(self) -> bool:
        """Rows carry their own tasks (and the mode depends on the task)."""
        return self.row_task is not None and self.mode in (Mode.visible, Mode.trainable)

    def routed(self, routing: Routing, rows_per_sample: int = 1) -> "Vis":
        """This selection for a batch whose sample i (rows i * rows_per_sample onwards) has
        task routing.task[i]."""
        return self._replace(row_task=routing.task, row_order=routing.order,
                             row_offsets=routing.offsets).per_row(rows_per_sample)

    def per_row(self, rows: int) -> "Vis":
        """Each row of this selection's batch split into `rows` consecutive rows (conv
        pixels, tokens of a sequence) with its task."""
        if self.row_task is None or rows == 1:
            return self
        within = torch.arange(rows, device=self.row_order.device)
        return self._replace(row_task=self.row_task.repeat_interleave(rows),
                             row_order=(self.row_order[:, None] * rows + within).flatten(),
                             row_offsets=self.row_offsets * rows)
