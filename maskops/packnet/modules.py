"""Layers PackNet adds to a model: BatchNorm it can freeze, and one classifier head per task."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maskops.routing import route


class _FreezableBatchNorm:
    """BatchNorm whose state PackNet keeps per task (or trains with task 1 only).

    While `frozen` is set (a finished task is selected) it normalizes with its
    running statistics and updates nothing, in train mode too, like torchvision's
    FrozenBatchNorm2d: a finished task's outputs must not depend on the batch.
    """

    frozen = False

    def forward(self, input):
        if not self.frozen:
            return super().forward(input)
        self._check_input_dim(input)
        # Without running statistics there is nothing to freeze but the affine part.
        batch_stats = self.running_mean is None
        return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                            batch_stats, 0.0, self.eps)


class TaskBatchNorm1d(_FreezableBatchNorm, nn.BatchNorm1d):
    pass


class TaskBatchNorm2d(_FreezableBatchNorm, nn.BatchNorm2d):
    pass


class TaskBatchNorm3d(_FreezableBatchNorm, nn.BatchNorm3d):
    pass


_BATCHNORMS = {nn.BatchNorm1d: TaskBatchNorm1d, nn.BatchNorm2d: TaskBatchNorm2d,
               nn.BatchNorm3d: TaskBatchNorm3d}
PLAIN_BATCHNORM = {task_class: plain for plain, task_class in _BATCHNORMS.items()}


def convert_batchnorm(model: nn.Module) -> list[nn.Module]:
    """Swap the class of every nn.BatchNorm1d/2d/3d in place (Parameters kept); returns them all."""
    found = []
    for module in model.modules():
        replacement = _BATCHNORMS.get(type(module))
        if replacement is not None:
            module.__class__ = replacement
        if isinstance(module, _FreezableBatchNorm):
            found.append(module)
    return found


class _Head(nn.Linear):
    """A plain nn.Linear that maskops.convert leaves alone: a head belongs to one task whole."""
    maskops_keep_plain = True


class TaskHeads(nn.Module):
    """One linear classifier per task; `forward` uses the head of `task`.

    `out_features` lists each task's number of outputs.  `task` is an int (1-based,
    set by PackNet.set_task) or a (B,) tensor when every head has the same width.
    Under PackNet, head t is trained by task t only and frozen once it ends.
    """

    def __init__(self, in_features: int, out_features: Sequence[int], bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.heads = nn.ModuleList(_Head(in_features, n, bias, device, dtype) for n in out_features)
        self.task = 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        task = self.task
        if isinstance(task, int):
            self._check_range(task, task)
            return self.heads[task - 1](input)
        if len({head.out_features for head in self.heads}) > 1:
            raise ValueError("per-sample tasks need TaskHeads whose heads all have the same width")
        routing = route(task, input.device)
        offsets = routing.offsets.numpy()
        present = np.flatnonzero(np.diff(offsets))
        if present.size:
            self._check_range(int(present.min()), int(present.max()))
        out = input.new_empty((input.shape[0], self.heads[0].out_features))
        for t in present:
            rows = routing.order[offsets[t]:offsets[t + 1]]
            out.index_copy_(0, rows, self.heads[t - 1](input.index_select(0, rows)))
        return out

    def _check_range(self, low: int, high: int) -> None:
        if low < 1 or high > len(self.heads):
            raise ValueError(f"task must be in 1..{len(self.heads)} (one head per task), "
                             f"got {low if low < 1 else high}")

    def extra_repr(self) -> str:
        return f"task={self.task if isinstance(self.task, int) else 'per-sample'}"
