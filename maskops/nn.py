"""Drop-in replacements for nn.Linear and nn.Conv2d that run task-masked ops.

Each layer is a subclass of the torch layer it replaces, with the same
constructor, Parameters and state_dict keys, plus:
    owner     uint8 buffer shaped like the weight (default all 1s: every weight
              belongs to task 1, so a fresh or converted layer computes what the
              plain layer computes)
    task      int, default 1, or per-sample tasks: a (B,) integer tensor, routed when it is
              set (maskops.route), or a Routing
    out_mask  None or a (out,) / (B, out) tensor multiplying the output channels
A state_dict without `owner` (a plain nn.Linear/nn.Conv2d one) loads with owner = 1s.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn
import torch.nn.functional as F

from maskops import ops
from maskops.modes import MAX_TASK
from maskops.routing import Routing, route


def _is_owner_map(t) -> bool:
    """Integer values in 0..MAX_TASK (so a cast to uint8 keeps them)."""
    if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        return False
    return t.dtype == torch.uint8 or t.numel() == 0 or (0 <= int(t.min()) and int(t.max()) <= MAX_TASK)


def _routed(task, device):
    """task as the ops take it: per-sample task tensors routed once, here."""
    if isinstance(task, torch.Tensor) and task.dim() > 0:
        return route(task, device)
    if isinstance(task, Routing) and task.device != device:
        return task.to(device)
    return task


def owner_name(weight_name: str) -> str:
    """The owner buffer of a masked weight: weight -> owner, in_proj_weight -> in_proj_owner."""
    return weight_name[:-len("weight")] + "owner"


class TaskMaskedLayer:
    """Owner buffers, task and out_mask of every masked layer (also the subclasses convert
    makes).  `plain_class` is the torch class a layer was converted from; `masked_weights()`
    names the Parameters the layer masks, each with the owner buffer `owner_name(name)`."""

    def masked_weights(self) -> tuple:
        return ("weight",)

    def masked_pairs(self) -> list:
        """[(weight, owner)] of every weight this layer masks."""
        return [(getattr(self, name), getattr(self, owner_name(name))) for name in self.masked_weights()]

    @property
    def task(self) -> Union[int, Routing]:
        return self._task

    @task.setter
    def task(self, value):
        self._task = _routed(value, getattr(self, self.masked_weights()[0]).device)

    def _init_task_state(self):
        for name in self.masked_weights():
            weight = getattr(self, name)
            self.register_buffer(owner_name(name), torch.ones(weight.shape, dtype=torch.uint8,
                                                              device=weight.device))
        self.task = 1
        self.out_mask = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for name in self.masked_weights():
            key = prefix + owner_name(name)
            if key not in state_dict:
                state_dict = dict(state_dict)
                state_dict[key] = torch.ones_like(getattr(self, owner_name(name)))
            elif not _is_owner_map(state_dict[key]):
                error_msgs.append(f"{key}: an owner map holds task ids 0..{MAX_TASK} as integers; "
                                  f"got a {state_dict[key].dtype} tensor that does not (it would "
                                  f"not load as uint8 unchanged)")
                state_dict = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self):
        task = self.task if not isinstance(self.task, Routing) else "per-sample"
        return f"{super().extra_repr()}, task={task}"


class MaskedLinear(TaskMaskedLayer, nn.Linear):
    plain_class = nn.Linear

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_task_state()

    def forward(self, input):
        return ops.task_linear(input, self.weight, self.owner, self.task, self.bias,
                               out_mask=self.out_mask)


class MaskedConv2d(TaskMaskedLayer, nn.Conv2d):
    plain_class = nn.Conv2d

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device, dtype)
        self._init_task_state()

    def _conv_forward(self, input, weight, bias):
        padding = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return ops.task_conv2d(input, weight, self.owner, self.task, bias, self.stride, padding,
                               self.dilation, self.groups, out_mask=self.out_mask)


def set_task(model: nn.Module, task) -> nn.Module:
    """Set `task` (int, or per-sample tasks: a (B,) tensor or Routing) on every masked layer
    of `model`.  A task tensor is checked and routed once here, for all layers."""
    layers = [m for m in model.modules() if isinstance(m, TaskMaskedLayer)]
    if layers:
        task = _routed(task, layers[0].masked_pairs()[0][0].device)
    for module in layers:
        module.task = task
    return model
