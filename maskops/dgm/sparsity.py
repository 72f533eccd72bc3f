"""The DGM sparsity regularizer: keeps each task's mask small, harder as free capacity runs out."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor


def sparsity_loss(layers: Iterable, s: Optional[float], strength: float) -> Tensor:
    """strength * (S / S_free) * sum(m * free) / S_free, summed over the layers being learned.

    m is the learned mask at gate scale `s`, free the entries (weights or units)
    no finished task reserved, S all entries and S_free the free ones.  The first
    factor is HAT's regularizer; DGM scales it by S / S_free so that the less free
    capacity is left, the more a task pays for taking it.
    """
    used, free, total = [], 0, 0
    for layer in layers:
        usage = layer.mask_usage(s)
        if usage is not None:
            used.append(usage[0])
            free += int(usage[1])
            total += usage[2]
    if not used:
        return torch.zeros(())
    free = max(free, 1)
    return strength * (total / free) * torch.stack(used).sum() / free
