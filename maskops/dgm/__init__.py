"""DGM (Ostapenko et al., CVPR 2019): learned per-task masks over a shared network, with generative replay.

    masks      DGMLinear / DGMConv2d: per-task weight (DGM-w) or unit (DGM-a) masks,
               annealed-sigmoid or straight-through gates, reservation of used weights
    network    DGMSequential: a chain of such layers that learns, reserves and grows as one
    sparsity   the sparsity regularizer weighted by free capacity
    expansion  growing layers by the capacity the last task reserved
    gan        the conditional generator (masked), critic + classifier, gradient penalty
    trainer    DGM: class-incremental learning with generative replay
"""
from maskops.dgm.expansion import expand
from maskops.dgm.gan import Discriminator, Generator, gradient_penalty
from maskops.dgm.masks import DGMConv2d, DGMLinear, TaskMaskedLayer, anneal, gate
from maskops.dgm.network import DGMSequential
from maskops.dgm.sparsity import sparsity_loss
from maskops.dgm.trainer import DGM

__all__ = [
    "DGM", "DGMLinear", "DGMConv2d", "DGMSequential", "TaskMaskedLayer", "Generator", "Discriminator",
    "anneal", "gate", "sparsity_loss", "expand", "gradient_penalty",
]
