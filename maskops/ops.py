"""The public functions: task_linear, masked_linear, task_conv2d, masked_conv2d.

Each is a thin call of one op (`torch.ops.maskops.*`, schemas in python/ops.cpp): it turns
`task` into a task id or a routing (maskops.routing), resolves string paddings, and passes the
backend `maskops.use_backend` chose.  Everything else -- argument checks, autograd, the
kernels -- is the op's, in C++, so the `cpu` and `cuda` backends run with no Python between
this call and the kernel.  In eager mode the call enters the dispatcher through maskops._C
(the same op, without torch.ops' Python layer); torch.compile traces the torch.ops spelling.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from maskops.backends import _state
from maskops.modes import _C
from maskops.routing import Routing, route

Task = Union[int, Tensor, Routing]

_NO_ROUTING = (None, None, None)
_is_compiling = torch.compiler.is_compiling


def _entries(name: str) -> tuple:
    """(eager, traced) spellings of op `name`, indexed by _is_compiling()."""
    return getattr(_C, name), getattr(torch.ops.maskops, name).default


_TASK_LINEAR, _MASKED_LINEAR = _entries("task_linear"), _entries("masked_linear")
_TASK_CONV2D, _MASKED_CONV2D = _entries("task_conv2d"), _entries("masked_conv2d")


def _task(task, x) -> tuple:
    """(task id, routing tensors) of the public `task` argument; a per-sample tensor is
    routed here (route it once per batch with maskops.route or set_task to save that)."""
    device = x.device if isinstance(x, Tensor) else None
    if isinstance(task, Routing):
        return 0, (task if device is None else task.to(device))
    if isinstance(task, Tensor):
        if task.dim() == 0 and not (task.is_floating_point() or task.is_complex()
                                    or task.dtype == torch.bool):
            return int(task), _NO_ROUTING
        return 0, route(task, device)
    if isinstance(task, bool) or not isinstance(task, int):
        raise TypeError(f"task must be an int or an integer tensor, got {type(task).__name__}")
    return int(task), _NO_ROUTING


def _reraise_as_type_error(error: RuntimeError, **named) -> None:
    """An op schema rejects a non-tensor without naming it; name it."""
    for name, value in named.items():
        if not isinstance(value, Tensor) and (value is not None or name in ("x", "weight", "owner", "mask")):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}") from error


def task_linear(x: Tensor, weight: Tensor, owner: Tensor, task: Task, bias: Optional[Tensor] = None,
                *, out_mask: Optional[Tensor] = None) -> Tensor:
    """y = x @ (weight * visible(owner, task)).T + bias, times out_mask; task int, (B,) tensor
    or Routing."""
    task_id, routing = (task, _NO_ROUTING) if type(task) is int else _task(task, x)
    try:
        return _TASK_LINEAR[_is_compiling()](x, weight, owner, task_id, *routing, bias, out_mask,
                                             _state.backend)
    except (RuntimeError, TypeError) as error:
        _reraise_as_type_error(error, x=x, weight=weight, owner=owner, bias=bias, out_mask=out_mask)
        raise


def masked_linear(x: Tensor, weight: Tensor, mask: Tensor, bias: Optional[Tensor] = None, *,
                  out_mask: Optional[Tensor] = None, trainable: Optional[Tensor] = None) -> Tensor:
    """y = x @ (weight * mask).T + bias, times out_mask.  `trainable` limits weight gradients."""
    try:
        return _MASKED_LINEAR[_is_compiling()](x, weight, mask, trainable, bias, out_mask,
                                               _state.backend)
    except (RuntimeError, TypeError) as error:
        _reraise_as_type_error(error, x=x, weight=weight, mask=mask, bias=bias, out_mask=out_mask,
                               trainable=trainable)
        raise


def _pair(name, value):
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return list(value)
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def _string_padding(x, weight, padding: str, stride, dilation):
    """'valid' or 'same' as explicit symmetric padding, x padded on one side where 'same' needs it."""
    if padding == "valid":
        return x, 0
    if padding != "same":
        raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    if any(s != 1 for s in _pair("stride", stride)):
        raise ValueError("padding='same' is not supported for strided convolutions")
    dilation = _pair("dilation", dilation)
    total = [dilation[a] * (weight.shape[2 + a] - 1) for a in (0, 1)]
    extra = [t % 2 for t in total]
    if any(extra) and isinstance(x, Tensor) and x.dim() == 4:
        # As torch does: the odd extra pixel goes to the bottom/right.
        x = torch.nn.functional.pad(x, [0, extra[1], 0, extra[0]])
    return x, [t // 2 for t in total]


def _as_pair(value):
    return (value, value) if type(value) is int else value


def _conv(entries, x, weight, selection: tuple, bias, out_mask, stride, padding, dilation, groups,
          named: dict) -> Tensor:
    unbatched = isinstance(x, Tensor) and x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    if isinstance(padding, str):
        x, padding = _string_padding(x, weight, padding, stride, dilation)
    try:
        y = entries[_is_compiling()](x, weight, *selection, bias, out_mask, _as_pair(stride), _as_pair(padding),
                      _as_pair(dilation), groups, _state.backend)
    except (RuntimeError, TypeError) as error:
        _reraise_as_type_error(error, x=x, weight=weight, bias=bias, out_mask=out_mask, **named)
        raise
    return y.squeeze(0) if unbatched else y


def task_conv2d(x: Tensor, weight: Tensor, owner: Tensor, task: Task, bias: Optional[Tensor] = None,
                stride=1, padding=0, dilation=1, groups: int = 1, *,
                out_mask: Optional[Tensor] = None) -> Tensor:
    """F.conv2d with weight * visible(owner, task); task int, (B,) tensor or Routing."""
    task_id, routing = (task, _NO_ROUTING) if type(task) is int else _task(task, x)
    return _conv(_TASK_CONV2D, x, weight, (owner, task_id, *routing), bias, out_mask, stride,
                 padding, dilation, groups, dict(owner=owner))


def masked_conv2d(x: Tensor, weight: Tensor, mask: Tensor, bias: Optional[Tensor] = None,
                  stride=1, padding=0, dilation=1, groups: int = 1, *,
                  out_mask: Optional[Tensor] = None, trainable: Optional[Tensor] = None) -> Tensor:
    """F.conv2d with weight * mask.  `trainable` limits weight gradients."""
    return _conv(_MASKED_CONV2D, x, weight, (mask, trainable), bias, out_mask, stride, padding,
                 dilation, groups, dict(mask=mask, trainable=trainable))
