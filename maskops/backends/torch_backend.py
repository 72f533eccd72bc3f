"""The `torch` backend: builds the effective weight and calls ATen.  Any device, any dtype.

Weights a selection leaves out are replaced by zeros (not multiplied by 0), so a NaN or inf
there never reaches the output, as in the native kernels.  Mixed-task rows are grouped by
their routing's offsets, which live on the CPU: nothing is read from the device.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

from maskops import reference
from maskops.modes import Mode
from maskops.selection import Vis


def available() -> bool:
    return True


def supports(device: torch.device, dtype: torch.dtype) -> bool:
    return dtype.is_floating_point


def effective_weight(w: torch.Tensor, vis: Vis, task: int) -> torch.Tensor:
    if vis.mode == Mode.visible:
        return torch.where(reference.visible(vis.owner, task), w, 0)
    if vis.mode == Mode.trainable:
        return torch.where(reference.trainable(vis.owner, task), w, 0)
    if vis.mode == Mode.mask:
        if vis.mask.is_floating_point():
            return w * vis.mask
        return torch.where(vis.mask.bool(), w, 0)
    return w


def _groups(vis: Vis):
    """(task, rows or None) pairs: one per task present among the rows."""
    if not vis.mixed:
        return [(vis.task, None)]
    offsets = vis.row_offsets.numpy()
    return [(int(t), vis.row_order[offsets[t]:offsets[t + 1]])
            for t in np.flatnonzero(np.diff(offsets))]


def _by_rows(vis: Vis, rows: torch.Tensor, run) -> torch.Tensor:
    """run(rows of a task, task) per task, scattered back into row order."""
    groups = _groups(vis)
    if groups[0][1] is None:
        return run(rows, vis.task)
    parts = [(index, run(rows.index_select(0, index), task)) for task, index in groups]
    first = parts[0][1]
    out = first.new_empty((rows.shape[0],) + first.shape[1:])
    for index, part in parts:
        out.index_copy_(0, index, part)
    return out


def _summed(vis: Vis, a: torch.Tensor, b: torch.Tensor, run) -> torch.Tensor:
    """Sum of run(a rows, b rows, task) over the tasks present (weight gradients)."""
    total = None
    for task, index in _groups(vis):
        part = run(a, b, task) if index is None else \
            run(a.index_select(0, index), b.index_select(0, index), task)
        total = part if total is None else total + part
    return total


def linear_forward(x, w, vis, bias, out_mask):
    y = _by_rows(vis, x, lambda xs, t: F.linear(xs, effective_weight(w, vis, t)))
    if bias is not None:
        y = y + bias
    return reference.apply_out_mask(y, out_mask, conv=False)


def linear_grad_input(grad, w, vis):
    return _by_rows(vis, grad, lambda gs, t: gs @ effective_weight(w, vis, t))


def linear_grad_weight(grad, x, vis):
    return _summed(vis, grad, x, lambda g, xs, t: effective_weight(g.t() @ xs, vis, t))


def conv2d_forward(x, w, vis, bias, out_mask, stride, padding, dilation, groups):
    y = _by_rows(vis, x, lambda xs, t: F.conv2d(
        xs, effective_weight(w, vis, t), None, stride, padding, dilation, groups))
    if bias is not None:
        y = y + bias.reshape(-1, 1, 1)
    return reference.apply_out_mask(y, out_mask, conv=True)


def conv2d_grad_input(grad, w, vis, input_shape, stride, padding, dilation, groups):
    def run(gs, t):
        shape = (gs.shape[0],) + tuple(input_shape[1:])
        return conv2d_input(shape, effective_weight(w, vis, t), gs, stride, padding, dilation, groups)
    return _by_rows(vis, grad, run)


def conv2d_grad_weight(grad, x, vis, weight_shape, stride, padding, dilation, groups):
    return _summed(vis, grad, x, lambda g, xs, t: effective_weight(
        conv2d_weight(xs, weight_shape, g, stride, padding, dilation, groups), vis, t))
