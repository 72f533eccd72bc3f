"""Dynamic expansion: grow layers by the capacity the last task reserved, and tensor helpers for it."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor


def uniform(shape, bound: float, like: Tensor) -> Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device).uniform_(-bound, bound)


def grow(tensor: Tensor, out_units: int, in_units: int, fill: Optional[Callable], first_dim: int = 0) -> Tensor:
    """`tensor` with `out_units` entries appended along `first_dim` and `in_units` along the next one.

    fill(shape) makes the new entries; None fills with zeros (False for bool tensors).
    """
    make = fill or (lambda shape: torch.zeros(shape, dtype=tensor.dtype, device=tensor.device))
    for dim, count in ((first_dim + 1, in_units), (first_dim, out_units)):
        if count and dim < tensor.dim():
            shape = list(tensor.shape)
            shape[dim] = count
            tensor = torch.cat([tensor, make(shape)], dim)
    return tensor


def expand(layers) -> list[int]:
    """Grow each layer but the last by its `new_units` (set by end_task) and the next layer's inputs to match.

    `layers`: task-masked layers in order, each one's outputs feeding the next.
    Returns the number of units added to each layer (0 for the last).
    """
    added = [layer.new_units for layer in layers[:-1]] + [0]
    for layer, next_layer, count in zip(layers, layers[1:], added):
        layer.grow(out_units=count)
        next_layer.grow(in_units=count)
        layer.new_units = 0
    layers[-1].new_units = 0
    return added
