"""The `torch` backend: builds the effective weight and calls ATen.  Any device, any dtype."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

from maskops import reference
from maskops.backends import Vis

name = "torch"


def available() -> bool:
    return True


def supports(device: torch.device, dtype: torch.dtype) -> bool:
    return dtype.is_floating_point


def effective_weight(w: torch.Tensor, vis: Vis, task: int) -> torch.Tensor:
    if vis.mode == "visible":
        return w * reference.visible(vis.owner, task).to(w.dtype)
    if vis.mode == "trainable":
        return w * reference.trainable(vis.owner, task).to(w.dtype)
    if vis.mode == "mask":
        return w * vis.mask.to(w.dtype)
    return w


def _groups(vis: Vis):
    """(task, row index or None) pairs: one per distinct task of the rows."""
    if vis.row_task is None:
        return [(vis.task, None)]
    return [(int(t), (vis.row_task == t).nonzero().flatten())
            for t in torch.unique(vis.row_task).tolist()]


def _by_rows(vis: Vis, rows: torch.Tensor, out_rows: int, run) -> torch.Tensor:
    """Apply `run(rows_of_task, task)` per task group and scatter rows back."""
    out = None
    for task, index in _groups(vis):
        part = run(rows if index is None else rows.index_select(0, index), task)
        if index is None:
            return part
        if out is None:
            out = part.new_zeros((out_rows,) + part.shape[1:])
        out.index_copy_(0, index, part)
    return out if out is not None else run(rows, vis.task)


def _summed(vis: Vis, a: torch.Tensor, b: torch.Tensor, run) -> torch.Tensor:
    """Sum of `run(a_rows, b_rows, task)` over task groups (weight gradients)."""
    total = None
    for task, index in _groups(vis):
        if index is not None:
            part = run(a.index_select(0, index), b.index_select(0, index), task)
        else:
            part = run(a, b, task)
        total = part if total is None else total + part
    return total if total is not None else run(a, b, vis.task)


def linear_forward(x, w, vis, bias, out_mask):
    y = _by_rows(vis, x, x.shape[0], lambda xs, t: F.linear(xs, effective_weight(w, vis, t)))
    if bias is not None:
        y = y + bias
    return reference.apply_out_mask(y, out_mask, conv=False)


def linear_grad_input(grad, w, vis):
    return _by_rows(vis, grad, grad.shape[0], lambda gs, t: gs @ effective_weight(w, vis, t))


def linear_grad_weight(grad, x, vis):
    return _summed(vis, grad, x, lambda g, xs, t: effective_weight(g.t() @ xs, vis, t))


def conv2d_forward(x, w, vis, bias, out_mask, stride, padding, dilation, groups):
    y = _by_rows(vis, x, x.shape[0], lambda xs, t: F.conv2d(
        xs, effective_weight(w, vis, t), None, stride, padding, dilation, groups))
    if bias is not None:
        y = y + bias.reshape(-1, 1, 1)
    return reference.apply_out_mask(y, out_mask, conv=True)


def conv2d_grad_input(grad, w, vis, input_shape, stride, padding, dilation, groups):
    def run(gs, t):
        shape = (gs.shape[0],) + tuple(input_shape[1:])
        return conv2d_input(shape, effective_weight(w, vis, t), gs, stride, padding, dilation, groups)
    return _by_rows(vis, grad, grad.shape[0], run)


def conv2d_grad_weight(grad, x, vis, weight_shape, stride, padding, dilation, groups):
    return _summed(vis, grad, x, lambda g, xs, t: effective_weight(
        conv2d_weight(xs, weight_shape, g, stride, padding, dilation, groups), vis, t))
