"""Routing of a batch that mixes tasks: per-sample task ids checked once and sorted by task.

`route(task)` turns a (B,) integer tensor into a `Routing`: the ids as int32, the samples in
task order and the offsets of each task's samples (on the CPU).  Every op of a forward reuses
it, so no op reads task ids on the host and a mixed-task forward has no host synchronization
(`maskops.set_task` and `PackNet.set_task` route once for the whole model).  This is where
invalid task ids are reported.  Build it from a CPU tensor (task ids usually come from the
host): the ids are then read without a device copy and only the sorted order is sent to the
device.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

from maskops.modes import _C


class Routing(NamedTuple):
    task: torch.Tensor     # int32 (B,): each sample's task, on the device of the inputs
    order: torch.Tensor    # int64 (B,): samples sorted by task (stable), on that device
    offsets: torch.Tensor  # int64 (TASK_IDS + 1,), on the CPU: task t has order[offsets[t]:offsets[t + 1]]

    @property
    def device(self) -> torch.device:
        return self.task.device

    def to(self, device) -> "Routing":
        """The same routing with task and order on `device` (offsets stay on the CPU)."""
        device = torch.device(device)
        if device == self.task.device:
            return self
        return Routing(self.task.to(device), self.order.to(device), self.offsets)


def route(task: Union[torch.Tensor, Routing], device: Optional[Union[str, torch.device]] = None) -> Routing:
    """The routing of per-sample task ids (ValueError for ids outside 1..255), on `device`
    (default: the ids' device).  A Routing is returned as is (moved to `device` if given)."""
    if isinstance(task, Routing):
        return task if device is None else task.to(device)
    if not isinstance(task, torch.Tensor):
        raise TypeError(f"task must be an integer tensor, got {type(task).__name__}")
    return Routing(*_C.route(task, None if device is None else torch.device(device)))
