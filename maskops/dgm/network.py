"""DGMSequential: a chain of task-masked layers (and activations) that learns, reserves and grows as one."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from maskops.dgm import expansion
from maskops.dgm.masks import TaskMaskedLayer
from maskops.dgm.sparsity import sparsity_loss


class DGMSequential(nn.Sequential):
    """Like nn.Sequential; task-masked layers get `task` and `s`, other modules only the input.

    The task-masked layers must form a chain (each one's outputs are the next
    one's inputs).  Other modules between them must map 0 to 0 per unit
    (ReLU, LeakyReLU, Tanh, ...), so that a unit switched off stays off.
    """

    def __init__(self, *modules: nn.Module):
        super().__init__(*modules)
        layers = self.masked_layers()
        if not layers:
            raise ValueError("DGMSequential needs at least one task-masked layer")
        for a, b in zip(layers, layers[1:]):
            if a.weight.shape[0] != b.weight.shape[1]:
                raise ValueError(f"task-masked layers must chain: a layer with {a.weight.shape[0]} outputs "
                                 f"is followed by one with {b.weight.shape[1]} inputs")

    def masked_layers(self) -> list[TaskMaskedLayer]:
        return [m for m in self if isinstance(m, TaskMaskedLayer)]

    def forward(self, x: Tensor, task, s: Optional[float] = None) -> Tensor:
        for module in self:
            x = module(x, task, s) if isinstance(module, TaskMaskedLayer) else module(x)
        return x

    @property
    def num_tasks(self) -> int:
        return self.masked_layers()[0].num_tasks

    def begin_task(self) -> int:
        """Start learning the next task; returns its id."""
        for layer in self.masked_layers():
            layer.begin_task()
        return self.num_tasks + 1

    def end_task(self) -> None:
        """Binarize the learned masks and reserve the weights they use (see TaskMaskedLayer.end_task)."""
        in_units = None
        for layer in self.masked_layers():
            layer.end_task(in_units)
            in_units = layer.units(layer.num_tasks)

    def expand(self) -> list[int]:
        """Grow each hidden layer by the capacity the last task reserved; returns the units added."""
        return expansion.expand(self.masked_layers())

    def sparsity_loss(self, s: Optional[float], strength: float) -> Tensor:
        return sparsity_loss(self.masked_layers(), s, strength)

    def density(self, task: int) -> float:
        """Fraction of the masked entries (weights or units) of all masked layers that `task` uses."""
        used = total = 0.0
        for layer in self.masked_layers():
            if layer.granularity is not None:
                count = layer.weight.numel() if layer.granularity == "weight" else layer.weight.shape[0]
                used += layer.density(task) * count
                total += count
        return used / total

    def sizes(self) -> list[int]:
        """Output units of each task-masked layer."""
        return [layer.weight.shape[0] for layer in self.masked_layers()]
