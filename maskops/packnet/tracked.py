"""The tensors PackNet protects, and how each one is put back after an optimizer step.

    MaskedWeight  a masked layer's weight, owned element by element (its owner map):
                  every entry outside the task being trained keeps the value it had at
                  the last task transition (pruned entries: zero).
    PerTask       a tensor with one value per task (biases and BatchNorm under the
                  'per_task' policy): the live tensor holds the selected task's value,
                  the values of the other tasks wait in `values`.
    Owned         a tensor trained by one task only (that task's head; biases and
                  BatchNorm under 'frozen', owned by task 1): kept at its value from
                  the end of that task.

Stored copies follow the live tensor's device and dtype lazily, so `model.to(...)`
after wrapping works.  Every method that writes runs under no_grad.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from maskops.nn import owner_name


def _like(stored: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    if stored.device != live.device or stored.dtype != live.dtype:
        return stored.to(device=live.device, dtype=live.dtype)
    return stored


class _Tracked:
    def __init__(self, module: nn.Module, name: str):
        self.module, self.name = module, name

    @property
    def live(self) -> torch.Tensor:
        # Looked up each time: module.to() may swap a buffer for a new tensor.
        return getattr(self.module, self.name)

    def _copy_in(self, stored: torch.Tensor) -> torch.Tensor:
        """Copy `stored` into the live tensor; returns it on the live device, to keep."""
        stored = _like(stored, self.live)
        self.live.copy_(stored)
        return stored


class MaskedWeight(_Tracked):
    def __init__(self, layer: nn.Module, name: str = "weight"):
        super().__init__(layer, name)
        self._keep: Optional[torch.Tensor] = None    # bool, where to restore; None: everywhere
        self._values: Optional[torch.Tensor] = None  # restored values; None: nothing protected

    @property
    def owner(self) -> torch.Tensor:
        return getattr(self.module, owner_name(self.name))

    @torch.no_grad()
    def protect(self, active: Optional[int]) -> None:
        """From now on hold every entry not owned by `active` (all if None) at its value now."""
        self.restore()
        weight = self.live.detach()
        if active is None:
            self._keep, self._values = None, weight.clone()
            return
        self._keep = self.owner != active
        self._values = weight.masked_select(self._keep)

    @torch.no_grad()
    def restore(self) -> None:
        if self._values is None or self._values.numel() == 0:
            return
        weight = self.live
        self._values = _like(self._values, weight)
        if self._keep is None:
            weight.copy_(self._values)
        else:
            self._keep = self._keep.to(weight.device)
            weight.masked_scatter_(self._keep, self._values)


class PerTask(_Tracked):
    def __init__(self, module: nn.Module, name: str):
        super().__init__(module, name)
        self.values: list[torch.Tensor] = []      # values[t - 1] is task t's
        self.frozen_task: Optional[int] = None    # the live tensor must hold this task's value

    def add_task(self) -> None:
        """A new task starts from the previous task's value (the live one for task 1)."""
        source = self.values[-1] if self.values else self.live
        self.values.append(source.detach().clone())

    def store(self, task: int) -> None:
        self.values[task - 1] = self.live.detach().clone()

    @torch.no_grad()
    def load(self, task: int) -> None:
        self.values[task - 1] = self._copy_in(self.values[task - 1])

    def restore(self) -> None:
        if self.frozen_task is not None:
            self.load(self.frozen_task)

    def state(self) -> list[torch.Tensor]:
        return list(self.values)

    def valid_state(self, state, num_tasks: int) -> bool:
        """Whether `state` (from a checkpoint) is one value shaped like the live one per task."""
        return isinstance(state, list) and len(state) == num_tasks and all(
            isinstance(v, torch.Tensor) and v.shape == self.live.shape for v in state)

    def load_state(self, state: list[torch.Tensor]) -> None:
        self.values = list(state)


class Owned(_Tracked):
    def __init__(self, module: nn.Module, name: str, task: int):
        super().__init__(module, name)
        self.task = task
        self.snapshot: Optional[torch.Tensor] = None  # set once the owning task has ended

    def end_task(self, task: int) -> None:
        if task == self.task:
            self.snapshot = self.live.detach().clone()

    @torch.no_grad()
    def restore(self) -> None:
        if self.snapshot is not None:
            self.snapshot = self._copy_in(self.snapshot)

    def state(self) -> Optional[torch.Tensor]:
        return self.snapshot

    def valid_state(self, state, num_tasks: int) -> bool:
        """Whether `state` (from a checkpoint) is None or a snapshot shaped like the live value."""
        return state is None or (isinstance(state, torch.Tensor) and state.shape == self.live.shape)

    def load_state(self, state: Optional[torch.Tensor]) -> None:
        self.snapshot = state
