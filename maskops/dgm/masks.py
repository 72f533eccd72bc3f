"""Layers that learn one binary mask per task over a shared weight (DGM-w) or its units (DGM-a).

A layer holds one weight shared by all tasks and, per finished task t, a binary
weight mask `task_masks[t-1]` (uint8, shaped like the weight) and a binary unit
mask `unit_masks[t-1]` (uint8, one entry per output unit).  `reserved` is the
union of the finished tasks' weight masks: those weights are frozen, because the
weight gradient of every forward is restricted to `~reserved` inside the op
backward (`trainable=`).  A unit's bias is frozen once a finished task used
the unit (`units_reserved`).

granularity
    "weight"  the task learns a mask over every weight (DGM-w).  Each task uses
              every unit that exists when it is learned (its bias included).
    "unit"    the task learns a mask over the output units, applied as the ops'
              `out_mask` (DGM-a).  Its weight mask is outer(out units, in units).
    None      no mask of its own (all outputs on, e.g. a DGM-a output layer);
              weights are still reserved through the input units a task used.

While task t = num_tasks + 1 is learned (after `begin_task()`), its mask is
gate(embedding, s) = sigmoid(s * embedding), or a hard 0/1 forward with the
sigmoid's gradient when `straight_through=True`.  `end_task()` binarizes it
(embedding > 0), adds it to `reserved` and records how many units the layer
should grow by (`new_units`); `maskops.dgm.expand` applies that growth.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from maskops import ops
from maskops.dgm import expansion

GRANULARITIES = ("weight", "unit", None)


def anneal(progress: float, s_max: float) -> float:
    """Gate scale s for training progress in [0, 1]: linear from 1/s_max to s_max (HAT/DGM schedule)."""
    progress = min(max(float(progress), 0.0), 1.0)
    return 1.0 / s_max + (s_max - 1.0 / s_max) * progress


class _StraightThrough(torch.autograd.Function):
    """Forward: the binary mask (embedding > 0), exactly.  Backward: sigmoid(s * embedding)'s gradient."""

    @staticmethod
    def forward(ctx, embedding, s):
        ctx.save_for_backward(torch.sigmoid(s * embedding))
        ctx.s = s
        return (embedding > 0).to(embedding.dtype)

    @staticmethod
    def backward(ctx, grad):
        (soft,) = ctx.saved_tensors
        return grad * ctx.s * soft * (1 - soft), None


def gate(embedding: Tensor, s: Optional[float], straight_through: bool = False) -> Tensor:
    """The task's mask while it is learned.  s=None gives the binary mask it will end with."""
    if s is None:
        return (embedding > 0).to(embedding.dtype)
    if straight_through:
        return _StraightThrough.apply(embedding, s)
    return torch.sigmoid(s * embedding)


class TaskMaskedLayer(nn.Module):
    """Shared weight, per-task binary masks, one mask being learned.  Subclasses supply the op."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor], granularity: Optional[str],
                 straight_through: bool, embedding_std: float):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.granularity = granularity
        self.straight_through = straight_through
        self.embedding_std = embedding_std
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        units, device = weight.shape[0], weight.device
        self.register_buffer("task_masks", torch.zeros((0, *weight.shape), dtype=torch.uint8, device=device))
        self.register_buffer("unit_masks", torch.zeros((0, units), dtype=torch.uint8, device=device))
        self.register_buffer("reserved", torch.zeros(weight.shape, dtype=torch.bool, device=device))
        self.register_buffer("units_reserved", torch.zeros(units, dtype=torch.bool, device=device))
        self.register_parameter("embedding", None)
        self.new_units = 0

    # -- subclass interface
    def _op(self, x, mask, bias, out_mask, trainable) -> Tensor:
        raise NotImplementedError

    def _fan_in(self) -> int:
        return self.weight[0].numel()

    def _sizes_changed(self) -> None:
        """Update the layer's size attributes (in_features, ...) after `grow`."""

    # -- tasks
    @property
    def num_tasks(self) -> int:
        """Number of finished tasks."""
        return self.task_masks.shape[0]

    def begin_task(self) -> None:
        """Start learning task num_tasks + 1 with a fresh mask embedding, N(0, embedding_std^2).

        Embeddings start near 0 (default std 0.01, where HAT uses 1) so that each
        entry's sign, its final on/off, is settled while the annealed gate is still soft.
        """
        if self.embedding is not None:
            raise RuntimeError(f"task {self.num_tasks + 1} is already being learned; call end_task() first")
        if self.granularity is None:
            return
        shape = self.weight.shape if self.granularity == "weight" else self.weight.shape[:1]
        embedding = torch.randn(shape, dtype=self.weight.dtype, device=self.weight.device) * self.embedding_std
        self.embedding = nn.Parameter(embedding)

    def end_task(self, in_units: Optional[Tensor] = None) -> None:
        """Binarize the learned mask and reserve its weights.

        in_units: the binary mask over this layer's inputs that the task used
        (the previous layer's unit mask; None: all inputs).  Unit layers need it
        to know which weights the task touched.
        """
        if self.granularity is not None and self.embedding is None:
            raise RuntimeError("end_task() without begin_task()")
        if self.granularity == "weight":
            weight_mask = self.embedding.detach() > 0
            units = torch.ones_like(self.units_reserved)
        else:
            units = (self.embedding.detach() > 0 if self.granularity == "unit"
                     else torch.ones_like(self.units_reserved))
            weight_mask = self._outer(units, in_units)
        reserved_before = int(self.reserved.sum())
        new_unit_count = int((units & ~self.units_reserved).sum())
        self.task_masks = torch.cat([self.task_masks, weight_mask.to(torch.uint8)[None]])
        self.unit_masks = torch.cat([self.unit_masks, units.to(torch.uint8)[None]])
        self.reserved |= weight_mask
        self.units_reserved |= units
        self.embedding = None
        # Grow by as many units as the task took: its new weights, in units' worth of weights
        # (DGM-w), or its new units (DGM-a), so the free capacity stays about the same.
        if self.granularity == "weight":
            self.new_units = math.ceil((int(self.reserved.sum()) - reserved_before) / self._fan_in())
        else:
            self.new_units = new_unit_count if self.granularity == "unit" else 0

    def _outer(self, units: Tensor, in_units: Optional[Tensor]) -> Tensor:
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        mask = units.bool().reshape(shape).expand(self.weight.shape)
        if in_units is not None:
            mask = mask & in_units.bool().reshape(1, -1, *(1,) * (self.weight.dim() - 2))
        return mask.clone()

    def units(self, task: int) -> Tensor:
        """Binary (uint8) mask over the output units that finished task `task` uses."""
        self._check_finished(task)
        return self.unit_masks[task - 1]

    def density(self, task: int) -> float:
        """Fraction of the layer's weights (weight granularity) or units that task `task` uses."""
        self._check_finished(task)
        masks = self.task_masks if self.granularity == "weight" else self.unit_masks
        return float(masks[task - 1].float().mean())

    def _check_finished(self, task: int) -> None:
        if not 1 <= task <= self.num_tasks:
            raise ValueError(f"task must be a finished task in 1..{self.num_tasks}, got {task}")

    # -- forward
    def forward(self, x: Tensor, task, s: Optional[float] = None) -> Tensor:
        """Output for `task` (int, or (B,) tensor of per-sample tasks).

        A finished task runs through its binary mask; the task being learned
        through gate(embedding, s) (s=None: its binary mask).
        """
        if isinstance(task, Tensor) and task.dim() == 1:
            return self._per_sample(x, task, s)
        task = int(task)
        mask, out_mask = self._masks(task, s)
        return self._op(x, mask, self._bias(), out_mask, ~self.reserved)

    def _masks(self, task: int, s: Optional[float]):
        """(weight mask, out_mask or None) of one task."""
        if 1 <= task <= self.num_tasks:
            out_mask = self.unit_masks[task - 1] if self.granularity == "unit" else None
            return self.task_masks[task - 1], out_mask
        if task != self.num_tasks + 1:
            raise ValueError(f"task {task} is neither finished (1..{self.num_tasks}) "
                             f"nor the one being learned ({self.num_tasks + 1})")
        if self.granularity is None:
            return self._all_weights(), None
        if self.embedding is None:
            raise RuntimeError(f"task {task} has not begun; call begin_task() first")
        mask = gate(self.embedding, s, self.straight_through)
        if self.granularity == "weight":
            return mask, None
        return self._all_weights(), mask

    def _all_weights(self) -> Tensor:
        return torch.ones_like(self.weight, dtype=torch.uint8)

    def _bias(self) -> Optional[Tensor]:
        if self.bias is None:
            return None
        # Frozen entries keep their value but get no gradient (a vector: done here, not in the op).
        return torch.where(self.units_reserved, self.bias.detach(), self.bias)

    def _per_sample(self, x: Tensor, tasks: Tensor, s: Optional[float]) -> Tensor:
        present, inverse = torch.unique(tasks.to(x.device), return_inverse=True)
        present = present.tolist()
        if not present:  # empty batch
            return self.forward(x, max(self.num_tasks, 1), s)
        if self.granularity == "weight":
            # Weight masks differ per task and an op takes one mask: one call per task present.
            parts = [(inverse == i).nonzero().flatten() for i in range(len(present))]
            outs = [self.forward(x.index_select(0, index), t, s) for index, t in zip(parts, present)]
            return torch.cat(outs).index_select(0, torch.cat(parts).argsort())
        # Unit masks: one call for the whole batch.  Every sample's inputs outside its task's
        # units are zero, so the union of the present tasks' weight masks computes each task's output.
        masks = [self._masks(t, s) for t in present]
        weight_mask = torch.stack([m for m, _ in masks]).amax(0)
        out_mask = None
        if self.granularity == "unit":
            out_mask = torch.stack([o.to(x.dtype) for _, o in masks])[inverse]
        return self._op(x, weight_mask, self._bias(), out_mask, ~self.reserved)

    # -- sparsity and expansion
    def mask_usage(self, s: Optional[float]):
        """(sum of the learned mask over free entries, free entries, all entries), or None.

        Entries are weights (weight granularity) or units; free = not reserved.
        """
        if self.granularity is None or self.embedding is None:
            return None
        free = ~(self.reserved if self.granularity == "weight" else self.units_reserved)
        mask = gate(self.embedding, s, self.straight_through)
        return (mask * free).sum(), free.sum(), free.numel()

    def grow(self, out_units: int = 0, in_units: int = 0) -> None:
        """Add output units and/or input units (channels).  Finished tasks do not see them.

        New weights and biases are drawn like a fresh nn.Linear/nn.Conv2d's.
        Parameters are replaced: build optimizers after growing.
        """
        if self.embedding is not None:
            raise RuntimeError("grow() while a task is being learned; call end_task() first")
        if out_units == 0 and in_units == 0:
            return
        fan_in = self._fan_in() // self.weight.shape[1] * (self.weight.shape[1] + in_units)
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = nn.Parameter(expansion.grow(self.weight.detach(), out_units, in_units,
                                                  lambda shape: expansion.uniform(shape, bound, self.weight)))
        if self.bias is not None:
            self.bias = nn.Parameter(expansion.grow(self.bias.detach(), out_units, 0,
                                                    lambda shape: expansion.uniform(shape, bound, self.bias)))
        self.task_masks = expansion.grow(self.task_masks, out_units, in_units, None, first_dim=1)
        self.unit_masks = expansion.grow(self.unit_masks, out_units, 0, None, first_dim=1)
        self.reserved = expansion.grow(self.reserved, out_units, in_units, None)
        self.units_reserved = expansion.grow(self.units_reserved, out_units, 0, None)
        self._sizes_changed()

    def _load_from_state_dict(self, state_dict, prefix, *args):
        # A checkpoint may hold more tasks, grown layers or a task being learned:
        # take its shapes, so a layer built with the original sizes loads it.
        for name in ("weight", "bias", "embedding"):
            key = prefix + name
            if key in state_dict and (getattr(self, name) is None
                                      or getattr(self, name).shape != state_dict[key].shape):
                setattr(self, name, nn.Parameter(torch.empty_like(state_dict[key], device=self.weight.device)))
        if prefix + "embedding" not in state_dict:
            self.embedding = None
        for name in ("task_masks", "unit_masks", "reserved", "units_reserved"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=self.weight.device))
        self._sizes_changed()
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return f"granularity={self.granularity}, tasks={self.num_tasks}"


class DGMLinear(TaskMaskedLayer):
    """nn.Linear-like layer with DGM task masks; runs `maskops.masked_linear`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 granularity: Optional[str] = "weight", straight_through: bool = False,
                 embedding_std: float = 0.01, device=None, dtype=None):
        reference = nn.Linear(in_features, out_features, bias, device=device, dtype=dtype)
        super().__init__(reference.weight.detach(), None if reference.bias is None else reference.bias.detach(),
                         granularity, straight_through, embedding_std)
        self._sizes_changed()

    def _sizes_changed(self):
        self.out_features, self.in_features = self.weight.shape

    def _op(self, x, mask, bias, out_mask, trainable):
        return ops.masked_linear(x, self.weight, mask, bias, out_mask=out_mask, trainable=trainable)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, {super().extra_repr()}"


class DGMConv2d(TaskMaskedLayer):
    """nn.Conv2d-like layer (groups=1, zero padding) with DGM task masks; runs `maskops.masked_conv2d`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, granularity: Optional[str] = "weight",
                 straight_through: bool = False, embedding_std: float = 0.01, device=None, dtype=None):
        reference = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                              bias=bias, device=device, dtype=dtype)
        super().__init__(reference.weight.detach(), None if reference.bias is None else reference.bias.detach(),
                         granularity, straight_through, embedding_std)
        self.stride, self.padding, self.dilation = reference.stride, reference.padding, reference.dilation
        self._sizes_changed()

    def _sizes_changed(self):
        self.out_channels, self.in_channels = self.weight.shape[:2]

    def _op(self, x, mask, bias, out_mask, trainable):
        return ops.masked_conv2d(x, self.weight, mask, bias, self.stride, self.padding, self.dilation,
                                 out_mask=out_mask, trainable=trainable)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.weight.shape[2:])}, "
                f"{super().extra_repr()}")
