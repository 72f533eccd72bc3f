"""Layers PackNet adds to a model: BatchNorm it can freeze, and one classifier head per task."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maskops.routing import route


class FreezableBatchNorm:
    """BatchNorm whose state PackNet keeps per task (or trains with task 1 only).

    While `frozen` is set (a finished task is selected) its forward runs as in eval mode, in
    train mode too, like torchvision's FrozenBatchNorm2d: it normalizes with its running
    statistics and updates nothing, since a finished task's outputs must not depend on the
    batch.  Running the layer's own forward keeps what a subclass adds (timm's BatchNormAct2d:
    the activation after the norm).
    """

    frozen = False

    def forward(self, *args, **kwargs):
        if not (self.frozen and self.training):
            return super().forward(*args, **kwargs)
        self.training = False
        try:
            return super().forward(*args, **kwargs)
        finally:
            self.training = True


class TaskBatchNorm1d(FreezableBatchNorm, nn.BatchNorm1d):
    plain_class = nn.BatchNorm1d


class TaskBatchNorm2d(FreezableBatchNorm, nn.BatchNorm2d):
    plain_class = nn.BatchNorm2d


class TaskBatchNorm3d(FreezableBatchNorm, nn.BatchNorm3d):
    plain_class = nn.BatchNorm3d


_BATCHNORMS = {nn.BatchNorm1d: TaskBatchNorm1d, nn.BatchNorm2d: TaskBatchNorm2d,
               nn.BatchNorm3d: TaskBatchNorm3d}


def _freezable(cls: type) -> type:
    """The freezable class of a BatchNorm class (subclasses get one made at run time)."""
    if cls not in _BATCHNORMS:
        _BATCHNORMS[cls] = type(f"Task{cls.__name__}", (FreezableBatchNorm, cls),
                                {"__module__": __name__, "plain_class": cls})
    return _BATCHNORMS[cls]


def convert_batchnorm(model: nn.Module) -> list[nn.Module]:
    """Swap the class of every BatchNorm (subclasses included) in place, Parameters kept;
    returns them all."""
    found = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, FreezableBatchNorm):
            module.__class__ = _freezable(type(module))
        if isinstance(module, FreezableBatchNorm):
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
