"""The definition of every maskops op, in plain torch.

Slow (it builds `weight * mask` on every call) but always available, on any
device.  Every backend is tested against these functions.

Semantics:
    visible(owner, t)   = (0 < owner) & (owner <= t)
    trainable(owner, t) = owner == t
    task_linear:   y = x @ (weight * visible).T + bias, then * out_mask (0 stays exactly 0)
    masked_linear: y = x @ (weight * mask).T + bias,    then * out_mask
and F.conv2d likewise.  The weight gradient of task ops is exactly zero outside
`trainable` (per sample when `task` is a tensor); a floating `mask` gets its
gradient; `trainable` (masked ops only, bool/uint8: nonzero = trainable) further restricts
the weight gradient.  A bool/uint8 `mask` selects: any nonzero value keeps the weight.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

Task = Union[int, torch.Tensor]


def visible(owner: torch.Tensor, task: int) -> torch.Tensor:
    return (owner > 0) & (owner <= task)


def trainable(owner: torch.Tensor, task: int) -> torch.Tensor:
    return owner == task


def _restrict_grad(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`weight`'s value, with a gradient only where `keep` is true."""
    keep = keep.to(weight.dtype)
    return weight * keep + (weight * (1 - keep)).detach()


def task_weight(weight: torch.Tensor, owner: torch.Tensor, task: int) -> torch.Tensor:
    """weight * visible(owner, task), differentiable only on trainable(owner, task)."""
    w = _restrict_grad(weight, trainable(owner, task))
    return w * visible(owner, task).to(weight.dtype)


def masked_weight(weight: torch.Tensor, mask: torch.Tensor,
                  trainable_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """weight * mask; a bool/uint8 mask selects (any nonzero value keeps the weight as it is)."""
    if trainable_mask is not None:
        weight = _restrict_grad(weight, trainable_mask.bool())
    if not mask.is_floating_point():
        mask = mask.bool().to(weight.dtype)
    return weight * mask


def apply_out_mask(y: torch.Tensor, out_mask: Optional[torch.Tensor], conv: bool) -> torch.Tensor:
    """y * out_mask; a channel whose out_mask is 0 is exactly 0 (a unit switched off stays off
    even where y is NaN or inf), and out_mask's gradient is y wherever y is finite."""
    if out_mask is None:
        return y
    out_mask = out_mask.to(y.dtype)
    if conv:
        out_mask = out_mask.reshape(*out_mask.shape, 1, 1)
    elif out_mask.dim() == 2 and y.dim() > 2:  # per-sample mask over (B, ..., N)
        out_mask = out_mask.reshape(out_mask.shape[0], *([1] * (y.dim() - 2)), out_mask.shape[1])
    return torch.where((out_mask == 0) & ~torch.isfinite(y), 0, y) * out_mask


def per_task(x: torch.Tensor, task: Task, run) -> torch.Tensor:
    """Run `run(x_part, t)` for each task value and scatter the results back by sample."""
    if not isinstance(task, torch.Tensor):
        return run(x, int(task))
    task = task.to(x.device)
    parts = []
    for t in torch.unique(task).tolist():
        index = (task == t).nonzero().flatten()
        parts.append((index, run(x.index_select(0, index), int(t))))
    out = parts[0][1].new_zeros((x.shape[0],) + parts[0][1].shape[1:]) if parts else None
    if out is None:  # empty batch with a per-sample task tensor
        return run(x, 1)
    for index, y in parts:
        out = out.index_copy(0, index, y)
    return out


def task_linear(x, weight, owner, task: Task, bias=None, *, out_mask=None):
    y = per_task(x, task, lambda xs, t: F.linear(xs, task_weight(weight, owner, t)))
    if bias is not None:
        y = y + bias
    return apply_out_mask(y, out_mask, conv=False)


def masked_linear(x, weight, mask, bias=None, *, out_mask=None, trainable=None):
    y = F.linear(x, masked_weight(weight, mask, trainable), bias)
    return apply_out_mask(y, out_mask, conv=False)


def _dilation(dilation, weight):
    """dilation, with 1 along an axis whose kernel size is 1 (where it changes nothing; oneDNN
    in torch 2.13 crashes on a 1x1 kernel with padding, stride 2 and dilation 2 over a
    width-1 channels_last input)."""
    pair = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
    return tuple(1 if weight.shape[2 + a] == 1 else pair[a] for a in (0, 1))


def task_conv2d(x, weight, owner, task: Task, bias=None, stride=1, padding=0, dilation=1,
                groups=1, *, out_mask=None):
    dilation = _dilation(dilation, weight)
    y = per_task(x, task, lambda xs, t: F.conv2d(
        xs, task_weight(weight, owner, t), None, stride, padding, dilation, groups))
    if bias is not None:
        y = y + bias.reshape(-1, 1, 1)
    return apply_out_mask(y, out_mask, conv=True)


def masked_conv2d(x, weight, mask, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                  out_mask=None, trainable=None):
    dilation = _dilation(dilation, weight)
    y = F.conv2d(x, masked_weight(weight, mask, trainable), bias, stride, padding, dilation, groups)
    return apply_out_mask(y, out_mask, conv=True)
