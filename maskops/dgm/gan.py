"""The conditional GAN of DGM: a task-masked generator and a critic that is also the classifier."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from maskops.dgm.masks import DGMLinear
from maskops.dgm.network import DGMSequential


class Generator(nn.Module):
    """[z, one_hot(y)] -> image in [0, 1], an MLP of task-masked layers.

    granularity "weight" (DGM-w) masks every layer's weights; "unit" (DGM-a)
    masks the hidden units, and the output layer keeps all pixels on.
    No batch norm: after a unit gate it would turn switched-off units into its
    shift (nonzero); per-task biases come from the bias reservation instead.
    """

    def __init__(self, num_classes: int, image_shape: Sequence[int], z_dim: int = 32,
                 hidden: Sequence[int] = (128, 256), granularity: str = "weight",
                 straight_through: bool = False):
        super().__init__()
        if granularity not in ("weight", "unit"):
            raise ValueError(f"granularity must be 'weight' (DGM-w) or 'unit' (DGM-a), got {granularity!r}")
        self.num_classes, self.image_shape, self.z_dim = num_classes, tuple(image_shape), z_dim
        sizes = [z_dim + num_classes, *hidden]
        modules = []
        for a, b in zip(sizes, sizes[1:]):
            modules += [DGMLinear(a, b, granularity=granularity, straight_through=straight_through),
                        nn.LeakyReLU(0.2)]
        out_granularity = "weight" if granularity == "weight" else None
        modules += [DGMLinear(sizes[-1], math.prod(self.image_shape), granularity=out_granularity,
                              straight_through=straight_through), nn.Sigmoid()]
        self.net = DGMSequential(*modules)

    def forward(self, z: Tensor, y: Tensor, task, s: Optional[float] = None) -> Tensor:
        x = torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], 1)
        return self.net(x, task, s).reshape(-1, *self.image_shape)


class Discriminator(nn.Module):
    """Critic (WGAN-GP score) and auxiliary classifier on one MLP trunk.  Plain layers, no norm:
    the gradient penalty differentiates through it twice."""

    def __init__(self, num_classes: int, image_shape: Sequence[int], hidden: Sequence[int] = (256, 128)):
        super().__init__()
        sizes = [math.prod(image_shape), *hidden]
        layers = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
        self.trunk = nn.Sequential(nn.Flatten(), *layers)
        self.critic = nn.Linear(sizes[-1], 1)
        self.classifier = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: Tensor):
        """(critic score (B,), class logits (B, num_classes))."""
        h = self.trunk(x)
        return self.critic(h).squeeze(1), self.classifier(h)


def gradient_penalty(discriminator: Discriminator, real: Tensor, fake: Tensor) -> Tensor:
    """WGAN-GP: E[(||grad_x critic(x_hat)|| - 1)^2] on random interpolates of real and fake."""
    alpha = torch.rand(real.shape[0], *(1,) * (real.dim() - 1), dtype=real.dtype, device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    score, _ = discriminator(mixed)
    (grad,) = torch.autograd.grad(score.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
