"""The maskops custom ops: schemas, fake kernels, autograd, and the public functions.

Each public function normalizes its arguments (int or tensor task, 'same' padding)
and calls one `torch.ops.maskops.*` op.  The op checks its inputs, then runs the
backend chosen by `maskops.use_backend` or by device (see `maskops.backends`).
Backward runs through four more ops (`linear_grad_input`, ...), so the backward
graph is made of maskops ops too and traces under torch.compile.
"""
from __future__ import annotations

import math
from typing import List, Optional, Union

import torch
from torch import Tensor

from maskops import backends, checks, reference
from maskops.backends import Vis

Task = Union[int, Tensor]

# ----------------------------------------------------------------------------- helpers


def _rows(t: Tensor) -> Tensor:
    """(..., C) viewed as (rows, C); unlike reshape(-1, C) this works when C is 0."""
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


def _row_task(tasks: Optional[Tensor], rows: int, device) -> Optional[Tensor]:
    """Per-sample task ids (B,) as int32 per row of the flattened input (rows,)."""
    if tasks is None:
        return None
    tasks = tasks.to(device=device, dtype=torch.int32)
    if tasks.shape[0] and rows != tasks.shape[0]:
        tasks = tasks.repeat_interleave(rows // tasks.shape[0])
    return tasks


def _rows_out_mask(out_mask: Optional[Tensor], rows: int, dtype) -> Optional[Tensor]:
    if out_mask is None:
        return None
    out_mask = out_mask.to(dtype)
    if out_mask.dim() == 2 and out_mask.shape[0] and out_mask.shape[0] != rows:
        out_mask = out_mask.repeat_interleave(rows // out_mask.shape[0], 0)
    return out_mask.contiguous()


def _channel_format(x: Tensor):
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def conv_output_shape(x_shape, w_shape, stride, padding, dilation):
    return [x_shape[0], w_shape[0]] + [
        (x_shape[2 + a] + 2 * padding[a] - dilation[a] * (w_shape[2 + a] - 1) - 1) // stride[a] + 1
        for a in (0, 1)]


def _backend(x: Tensor, *sizes: int):
    """The backend for x; the torch backend when the problem is empty."""
    if x.numel() == 0 or 0 in sizes:
        return backends.get("torch")
    return backends.select(x.device, x.dtype)


def _vis(mode, owner, mask, task, row_task) -> Vis:
    if mask is not None and mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    return Vis(mode, None if owner is None else owner.contiguous(),
               None if mask is None else mask.contiguous(), task, row_task)


# ----------------------------------------------------------------------------- forward ops


def _linear(x, weight, vis_mode, owner, mask, task, tasks, bias, out_mask):
    lead = x.shape[:-1]
    x2 = _rows(x).contiguous()
    rows = x2.shape[0]
    vis = _vis(vis_mode, owner, mask, task, _row_task(tasks, rows, x.device))
    y = _backend(x2, weight.shape[0], weight.shape[1]).linear_forward(
        x2, weight.contiguous(), vis, bias, _rows_out_mask(out_mask, rows, x.dtype))
    return y.reshape(*lead, weight.shape[0])


def _check_linear(x, weight, bias, out_mask, tasks, task):
    checks.input_and_weight(x, weight, conv=False)
    batch = x.shape[0] if x.dim() > 1 else None
    if tasks is not None and batch is None:
        raise ValueError("a per-sample task tensor needs x with a batch dimension")
    checks.task(task, tasks, batch, x.device)
    checks.bias(bias, x, weight.shape[0])
    checks.out_mask(out_mask, x, weight.shape[0], batch)


@torch.library.custom_op("maskops::task_linear", mutates_args=())
def _task_linear(x: Tensor, weight: Tensor, owner: Tensor, task: int, tasks: Optional[Tensor],
                 bias: Optional[Tensor], out_mask: Optional[Tensor]) -> Tensor:
    _check_linear(x, weight, bias, out_mask, tasks, task)
    checks.owner(owner, weight)
    return _linear(x, weight, "visible", owner, None, task, tasks, bias, out_mask)


@torch.library.custom_op("maskops::masked_linear", mutates_args=())
def _masked_linear(x: Tensor, weight: Tensor, mask: Tensor, trainable: Optional[Tensor],
                   bias: Optional[Tensor], out_mask: Optional[Tensor]) -> Tensor:
    _check_linear(x, weight, bias, out_mask, None, 1)
    checks.mask(mask, weight)
    if trainable is not None:
        checks.mask(trainable, weight, "trainable")
    return _linear(x, weight, "mask", None, mask, 1, None, bias, out_mask)


@_task_linear.register_fake
def _(x, weight, owner, task, tasks, bias, out_mask):
    _check_linear(x, weight, bias, out_mask, tasks, task)
    checks.owner(owner, weight)
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@_masked_linear.register_fake
def _(x, weight, mask, trainable, bias, out_mask):
    _check_linear(x, weight, bias, out_mask, None, 1)
    checks.mask(mask, weight)
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _conv(x, weight, vis_mode, owner, mask, task, tasks, bias, out_mask,
          stride, padding, dilation, groups):
    vis = _vis(vis_mode, owner, mask, task, _row_task(tasks, x.shape[0], x.device))
    backend = _backend(x, *weight.shape)
    y = backend.conv2d_forward(x, weight.contiguous(), vis, bias,
                               None if out_mask is None else out_mask.to(x.dtype).contiguous(),
                               tuple(stride), tuple(padding), tuple(dilation), groups)
    return y.contiguous(memory_format=_channel_format(x))


def _check_conv(x, weight, bias, out_mask, tasks, task, stride, padding, dilation, groups):
    checks.input_and_weight(x, weight, conv=True)
    checks.conv_geometry(x, weight, stride, padding, dilation, groups)
    checks.task(task, tasks, x.shape[0], x.device)
    checks.bias(bias, x, weight.shape[0])
    checks.out_mask(out_mask, x, weight.shape[0], x.shape[0])


def _conv_fake(x, weight, stride, padding, dilation):
    shape = conv_output_shape(x.shape, weight.shape, stride, padding, dilation)
    return x.new_empty(shape).contiguous(memory_format=_channel_format(x))


@torch.library.custom_op("maskops::task_conv2d", mutates_args=())
def _task_conv2d(x: Tensor, weight: Tensor, owner: Tensor, task: int, tasks: Optional[Tensor],
                 bias: Optional[Tensor], out_mask: Optional[Tensor], stride: List[int],
                 padding: List[int], dilation: List[int], groups: int) -> Tensor:
    _check_conv(x, weight, bias, out_mask, tasks, task, stride, padding, dilation, groups)
    checks.owner(owner, weight)
    return _conv(x, weight, "visible", owner, None, task, tasks, bias, out_mask,
                 stride, padding, dilation, groups)


@torch.library.custom_op("maskops::masked_conv2d", mutates_args=())
def _masked_conv2d(x: Tensor, weight: Tensor, mask: Tensor, trainable: Optional[Tensor],
                   bias: Optional[Tensor], out_mask: Optional[Tensor], stride: List[int],
                   padding: List[int], dilation: List[int], groups: int) -> Tensor:
    _check_conv(x, weight, bias, out_mask, None, 1, stride, padding, dilation, groups)
    checks.mask(mask, weight)
    if trainable is not None:
        checks.mask(trainable, weight, "trainable")
    return _conv(x, weight, "mask", None, mask, 1, None, bias, out_mask,
                 stride, padding, dilation, groups)


@_task_conv2d.register_fake
def _(x, weight, owner, task, tasks, bias, out_mask, stride, padding, dilation, groups):
    _check_conv(x, weight, bias, out_mask, tasks, task, stride, padding, dilation, groups)
    checks.owner(owner, weight)
    return _conv_fake(x, weight, stride, padding, dilation)


@_masked_conv2d.register_fake
def _(x, weight, mask, trainable, bias, out_mask, stride, padding, dilation, groups):
    _check_conv(x, weight, bias, out_mask, None, 1, stride, padding, dilation, groups)
    checks.mask(mask, weight)
    return _conv_fake(x, weight, stride, padding, dilation)


# ----------------------------------------------------------------------------- backward ops


@torch.library.custom_op("maskops::linear_grad_input", mutates_args=())
def linear_grad_input(grad: Tensor, weight: Tensor, mode: str, owner: Optional[Tensor],
                      mask: Optional[Tensor], task: int, row_task: Optional[Tensor]) -> Tensor:
    """grad (M, N) @ effective weight (N, K) -> (M, K)."""
    grad = grad.contiguous()
    return _backend(grad, *weight.shape).linear_grad_input(
        grad, weight.contiguous(), _vis(mode, owner, mask, task, row_task))


@torch.library.custom_op("maskops::linear_grad_weight", mutates_args=())
def linear_grad_weight(grad: Tensor, x: Tensor, mode: str, owner: Optional[Tensor],
                       mask: Optional[Tensor], task: int, row_task: Optional[Tensor]) -> Tensor:
    """(grad^T x) restricted to the weights `mode` selects -> (N, K)."""
    grad, x = grad.contiguous(), x.contiguous()
    return _backend(x, grad.shape[1]).linear_grad_weight(
        grad, x, _vis(mode, owner, mask, task, row_task))


@torch.library.custom_op("maskops::conv2d_grad_input", mutates_args=())
def conv2d_grad_input(grad: Tensor, weight: Tensor, mode: str, owner: Optional[Tensor],
                      mask: Optional[Tensor], task: int, row_task: Optional[Tensor],
                      input_shape: List[int], stride: List[int], padding: List[int],
                      dilation: List[int], groups: int) -> Tensor:
    gx = _backend(grad, *weight.shape).conv2d_grad_input(
        grad, weight.contiguous(), _vis(mode, owner, mask, task, row_task), tuple(input_shape),
        tuple(stride), tuple(padding), tuple(dilation), groups)
    return gx.contiguous(memory_format=_channel_format(grad))


@torch.library.custom_op("maskops::conv2d_grad_weight", mutates_args=())
def conv2d_grad_weight(grad: Tensor, x: Tensor, mode: str, owner: Optional[Tensor],
                       mask: Optional[Tensor], task: int, row_task: Optional[Tensor],
                       weight_shape: List[int], stride: List[int], padding: List[int],
                       dilation: List[int], groups: int) -> Tensor:
    gw = _backend(x, grad.shape[1], *weight_shape).conv2d_grad_weight(
        grad, x, _vis(mode, owner, mask, task, row_task), tuple(weight_shape),
        tuple(stride), tuple(padding), tuple(dilation), groups)
    return gw.contiguous()


@linear_grad_input.register_fake
def _(grad, weight, mode, owner, mask, task, row_task):
    return grad.new_empty(grad.shape[0], weight.shape[1])


@linear_grad_weight.register_fake
def _(grad, x, mode, owner, mask, task, row_task):
    return x.new_empty(grad.shape[1], x.shape[1])


@conv2d_grad_input.register_fake
def _(grad, weight, mode, owner, mask, task, row_task, input_shape, stride, padding, dilation, groups):
    return grad.new_empty(input_shape).contiguous(memory_format=_channel_format(grad))


@conv2d_grad_weight.register_fake
def _(grad, x, mode, owner, mask, task, row_task, weight_shape, stride, padding, dilation, groups):
    return x.new_empty(weight_shape)


# ----------------------------------------------------------------------------- autograd


def _out_mask_grad(grad, unmasked, out_mask, conv):
    """d loss / d out_mask, given the output before the mask was applied."""
    product = grad * unmasked
    if conv:
        product = product.sum(dim=(2, 3))
        return product.sum(0) if out_mask.dim() == 1 else product
    if out_mask.dim() == 1:
        return _rows(product).sum(0)
    return product.reshape(product.shape[0], -1, product.shape[-1]).sum(1)


def _bias_grad(grad, conv):
    return grad.sum(dim=(0, 2, 3)) if conv else _rows(grad).sum(0)


def _setup_task(ctx, inputs, output):
    x, weight, owner, task, tasks, bias, out_mask = inputs[:7]
    ctx.save_for_backward(x, weight, owner, tasks, bias, out_mask)
    ctx.task = task
    ctx.conv_args = inputs[7:]


def _setup_masked(ctx, inputs, output):
    x, weight, mask, trainable, bias, out_mask = inputs[:6]
    ctx.save_for_backward(x, weight, mask, trainable, bias, out_mask)
    ctx.conv_args = inputs[6:]


def _grad_input(ctx, conv, grad, weight, mode, owner, mask, task, row_task, x_shape):
    if conv:
        return conv2d_grad_input(grad, weight, mode, owner, mask, task, row_task,
                                 list(x_shape), *ctx.conv_args)
    g2 = _rows(grad)
    return linear_grad_input(g2, weight, mode, owner, mask, task, row_task).reshape(x_shape)


def _grad_weight(ctx, conv, grad, x, weight, mode, owner, mask, task, row_task):
    if conv:
        return conv2d_grad_weight(grad, x, mode, owner, mask, task, row_task,
                                  list(weight.shape), *ctx.conv_args)
    return linear_grad_weight(_rows(grad), _rows(x),
                              mode, owner, mask, task, row_task)


def _row_task_for(x, tasks, conv):
    if tasks is None:
        return None
    rows = x.shape[0] if conv else _rows(x).shape[0]
    return _row_task(tasks, rows, x.device)


def _task_backward(ctx, grad, conv):
    x, weight, owner, tasks, bias, out_mask = ctx.saved_tensors
    needs = ctx.needs_input_grad
    g = reference.apply_out_mask(grad, out_mask, conv)
    row_task = _row_task_for(x, tasks, conv)
    task = ctx.task
    grad_x = grad_w = grad_b = grad_om = None
    if needs[0]:
        grad_x = _grad_input(ctx, conv, g, weight, "visible", owner, None, task, row_task, x.shape)
    if needs[1]:
        grad_w = _grad_weight(ctx, conv, g, x, weight, "trainable", owner, None, task, row_task)
    if needs[5]:
        grad_b = _bias_grad(g, conv)
    if needs[6]:
        op = torch.ops.maskops.task_conv2d if conv else torch.ops.maskops.task_linear
        unmasked = op(x, weight, owner, task, tasks, bias, None, *ctx.conv_args)
        grad_om = _out_mask_grad(grad, unmasked, out_mask, conv)
    return (grad_x, grad_w, None, None, None, grad_b, grad_om) + (None,) * len(ctx.conv_args)


def _masked_backward(ctx, grad, conv):
    x, weight, mask, trainable, bias, out_mask = ctx.saved_tensors
    needs = ctx.needs_input_grad
    g = reference.apply_out_mask(grad, out_mask, conv)
    grad_x = grad_w = grad_mask = grad_b = grad_om = None
    if needs[0]:
        grad_x = _grad_input(ctx, conv, g, weight, "mask", None, mask, 1, None, x.shape)
    if needs[2]:
        # A soft mask's gradient needs the whole of grad^T x: compute it once, derive both.
        full = _grad_weight(ctx, conv, g, x, weight, "dense", None, None, 1, None)
        grad_mask = full * weight
        if needs[1]:
            keep = mask if trainable is None else mask * trainable.to(mask.dtype)
            grad_w = full * keep
    elif needs[1]:
        keep = mask
        if trainable is not None:
            keep = mask.bool() & trainable.bool() if not mask.is_floating_point() \
                else mask * trainable.to(mask.dtype)
        grad_w = _grad_weight(ctx, conv, g, x, weight, "mask", None, keep, 1, None)
    if needs[4]:
        grad_b = _bias_grad(g, conv)
    if needs[5]:
        op = torch.ops.maskops.masked_conv2d if conv else torch.ops.maskops.masked_linear
        unmasked = op(x, weight, mask, trainable, bias, None, *ctx.conv_args)
        grad_om = _out_mask_grad(grad, unmasked, out_mask, conv)
    return (grad_x, grad_w, grad_mask, None, grad_b, grad_om) + (None,) * len(ctx.conv_args)


torch.library.register_autograd("maskops::task_linear",
                                lambda ctx, g: _task_backward(ctx, g, False), setup_context=_setup_task)
torch.library.register_autograd("maskops::task_conv2d",
                                lambda ctx, g: _task_backward(ctx, g, True), setup_context=_setup_task)
torch.library.register_autograd("maskops::masked_linear",
                                lambda ctx, g: _masked_backward(ctx, g, False), setup_context=_setup_masked)
torch.library.register_autograd("maskops::masked_conv2d",
                                lambda ctx, g: _masked_backward(ctx, g, True), setup_context=_setup_masked)

# ----------------------------------------------------------------------------- public API


def _split_task(task: Task):
    """(int task, per-sample tensor or None) from the public `task` argument."""
    if isinstance(task, torch.Tensor):
        if task.dim() == 0 and not (task.is_floating_point() or task.dtype == torch.bool):
            return int(task), None
        return 0, task
    checks.task(task, None, None, None)
    return task, None


def _pair(name, value):
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return [int(v) if isinstance(v, int) else v for v in value]
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def _conv_padding(x, weight, padding, stride, dilation):
    """Explicit symmetric padding, and x padded on one side where 'same' needs it."""
    if not isinstance(padding, str):
        return x, _pair("padding", padding)
    if padding == "valid":
        return x, [0, 0]
    if padding != "same":
        raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    if any(s != 1 for s in stride):
        raise ValueError("padding='same' is not supported for strided convolutions")
    total = [dilation[a] * (weight.shape[2 + a] - 1) for a in (0, 1)]
    extra = [t % 2 for t in total]
    if any(extra) and isinstance(x, torch.Tensor) and x.dim() == 4:
        # As torch does: the odd extra pixel goes to the bottom/right.
        x = torch.nn.functional.pad(x, [0, extra[1], 0, extra[0]])
    return x, [t // 2 for t in total]


def _conv_args(x, weight, stride, padding, dilation, groups):
    stride, dilation = _pair("stride", stride), _pair("dilation", dilation)
    x, padding = _conv_padding(x, weight, padding, stride, dilation)
    return x, [stride, padding, dilation, groups]


def _unbatched(x, conv):
    return isinstance(x, torch.Tensor) and x.dim() == (3 if conv else 1)


def task_linear(x: Tensor, weight: Tensor, owner: Tensor, task: Task, bias: Optional[Tensor] = None,
                *, out_mask: Optional[Tensor] = None) -> Tensor:
    """y = x @ (weight * visible(owner, task)).T + bias, times out_mask; task int or (B,) tensor."""
    checks.tensors(x=x, weight=weight, owner=owner)
    checks.optional_tensors(bias=bias, out_mask=out_mask)
    task_id, tasks = _split_task(task)
    return torch.ops.maskops.task_linear(x, weight, owner, task_id, tasks, bias, out_mask)


def masked_linear(x: Tensor, weight: Tensor, mask: Tensor, bias: Optional[Tensor] = None, *,
                  out_mask: Optional[Tensor] = None, trainable: Optional[Tensor] = None) -> Tensor:
    """y = x @ (weight * mask).T + bias, times out_mask.  `trainable` limits weight gradients."""
    checks.tensors(x=x, weight=weight, mask=mask)
    checks.optional_tensors(bias=bias, out_mask=out_mask, trainable=trainable)
    return torch.ops.maskops.masked_linear(x, weight, mask, trainable, bias, out_mask)


def task_conv2d(x: Tensor, weight: Tensor, owner: Tensor, task: Task, bias: Optional[Tensor] = None,
                stride=1, padding=0, dilation=1, groups: int = 1, *,
                out_mask: Optional[Tensor] = None) -> Tensor:
    """F.conv2d with weight * visible(owner, task); task int or (B,) tensor."""
    checks.tensors(x=x, weight=weight, owner=owner)
    checks.optional_tensors(bias=bias, out_mask=out_mask)
    task_id, tasks = _split_task(task)
    unbatched = _unbatched(x, conv=True)
    if unbatched:
        x = x.unsqueeze(0)
    x, geometry = _conv_args(x, weight, stride, padding, dilation, groups)
    y = torch.ops.maskops.task_conv2d(x, weight, owner, task_id, tasks, bias, out_mask, *geometry)
    return y.squeeze(0) if unbatched else y


def masked_conv2d(x: Tensor, weight: Tensor, mask: Tensor, bias: Optional[Tensor] = None,
                  stride=1, padding=0, dilation=1, groups: int = 1, *,
                  out_mask: Optional[Tensor] = None, trainable: Optional[Tensor] = None) -> Tensor:
    """F.conv2d with weight * mask.  `trainable` limits weight gradients."""
    checks.tensors(x=x, weight=weight, mask=mask)
    checks.optional_tensors(bias=bias, out_mask=out_mask, trainable=trainable)
    unbatched = _unbatched(x, conv=True)
    if unbatched:
        x = x.unsqueeze(0)
    x, geometry = _conv_args(x, weight, stride, padding, dilation, groups)
    y = torch.ops.maskops.masked_conv2d(x, weight, mask, trainable, bias, out_mask, *geometry)
    return y.squeeze(0) if unbatched else y
