"""Fake kernels of the maskops ops (schemas: python/ops.cpp), for torch.compile, torch.export
and opcheck.  The public ops run the real kernels' argument checks (maskops._C.check_*, which
read symbolic shapes), then give the output's shape, dtype and memory format.
"""
from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format

from maskops.modes import _C

fake = torch.library.register_fake


def _conv_output_shape(x, weight, stride, padding, dilation):
    return [x.shape[0], weight.shape[0]] + [
        (x.shape[2 + a] + 2 * padding[a] - dilation[a] * (weight.shape[2 + a] - 1) - 1) // stride[a] + 1
        for a in (0, 1)]


def _like(shape, t):
    """An uninitialized tensor in the memory format the kernels give (that of `t`)."""
    return torch.empty(shape, dtype=t.dtype, device=t.device, memory_format=suggest_memory_format(t))


def _pair(v):
    return [v, v] if isinstance(v, int) else list(v)


@fake("maskops::task_linear")
def _(x, weight, owner, task, tasks, order, offsets, bias, out_mask, backend):
    _C.check_task_linear(x, weight, owner, task, tasks, order, offsets, bias, out_mask)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@fake("maskops::masked_linear")
def _(x, weight, mask, trainable, bias, out_mask, backend):
    _C.check_masked_linear(x, weight, mask, trainable, bias, out_mask)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@fake("maskops::task_conv2d")
def _(x, weight, owner, task, tasks, order, offsets, bias, out_mask, stride, padding, dilation,
      groups, backend):
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    _C.check_task_conv2d(x, weight, owner, task, tasks, order, offsets, bias, out_mask, stride,
                         padding, dilation, groups)
    return _like(_conv_output_shape(x, weight, stride, padding, dilation), x)


@fake("maskops::masked_conv2d")
def _(x, weight, mask, trainable, bias, out_mask, stride, padding, dilation, groups, backend):
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    _C.check_masked_conv2d(x, weight, mask, trainable, bias, out_mask, stride, padding, dilation,
                           groups)
    return _like(_conv_output_shape(x, weight, stride, padding, dilation), x)


@fake("maskops::linear_grad_input")
def _(grad, weight, mode, owner, mask, task, tasks, order, offsets, backend):
    return grad.new_empty((*grad.shape[:-1], weight.shape[1]))


@fake("maskops::linear_grad_weight")
def _(grad, x, mode, owner, mask, task, tasks, order, offsets, backend):
    return x.new_empty((grad.shape[-1], x.shape[-1]))


@fake("maskops::conv2d_grad_input")
def _(grad, weight, mode, owner, mask, task, tasks, order, offsets, input_shape, stride, padding,
      dilation, groups, backend):
    return _like(input_shape, grad)


@fake("maskops::conv2d_grad_weight")
def _(grad, x, mode, owner, mask, task, tasks, order, offsets, weight_shape, stride, padding,
      dilation, groups, backend):
    return x.new_empty(weight_shape)


@fake("maskops::pack_visible")
def _(owner, task):
    return owner.new_empty((owner.shape[0], (owner.shape[1] + 31) // 32), dtype=torch.int32)
