"""DGM: class-incremental learning with a task-masked conditional GAN and generative replay.

Per task (a set of new classes): the generator learns a mask for the task on
top of the weights earlier tasks reserved (which it may reuse but not change);
the discriminator learns the new classes from real data and all earlier
classes from samples the generator replays with their own tasks' masks.  After
the task its masks are binarized and reserved, and the generator grows.

Optimizers are rebuilt for every task (parameters change shape when layers
grow).  They are Adam without weight decay: a reserved weight's gradient is
exactly zero from the task's first step, so Adam's moments stay zero and its
update is exactly zero; earlier tasks' samples stay bit-exact (up to the sum
order that growing a layer changes).  Weight decay or optimizer state carried
over from an earlier task would move reserved weights.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from maskops.dgm.gan import Discriminator, Generator, gradient_penalty
from maskops.dgm.masks import anneal


class DGM(nn.Module):
    """Generator with DGM masks (DGM-w: granularity "weight", DGM-a: "unit") + critic/classifier."""

    def __init__(self, num_classes: int, image_shape: Sequence[int], granularity: str = "weight", *,
                 z_dim: int = 32, generator_hidden: Sequence[int] = (128, 256),
                 discriminator_hidden: Sequence[int] = (256, 128), straight_through: bool = False,
                 s_max: float = 400.0, sparsity: float = 2.0, lr: float = 1e-3, mask_lr: float = 1e-2,
                 gp_weight: float = 10.0, aux_weight: float = 1.0, batch_size: int = 64,
                 expand: bool = True):
        super().__init__()
        self.config = dict(num_classes=num_classes, image_shape=tuple(image_shape), granularity=granularity,
                           z_dim=z_dim, generator_hidden=tuple(generator_hidden),
                           discriminator_hidden=tuple(discriminator_hidden),
                           straight_through=straight_through, s_max=s_max, sparsity=sparsity, lr=lr,
                           mask_lr=mask_lr, gp_weight=gp_weight, aux_weight=aux_weight,
                           batch_size=batch_size, expand=expand)
        self.generator = Generator(num_classes, image_shape, z_dim, generator_hidden, granularity,
                                   straight_through)
        self.discriminator = Discriminator(num_classes, image_shape, discriminator_hidden)
        # The task that learned each class; 0 = not seen yet.
        self.register_buffer("class_task", torch.zeros(num_classes, dtype=torch.long))

    @property
    def num_tasks(self) -> int:
        return self.generator.net.num_tasks

    def seen_classes(self) -> Tensor:
        return (self.class_task > 0).nonzero().flatten()

    # -- learning
    def learn_task(self, x: Tensor, y: Tensor, steps: int,
                   callback: Optional[Callable[[int], None]] = None) -> dict:
        """Learn the classes in `y` (none seen before) from images `x` for `steps` GAN steps.

        Returns {"task", "density" (of the task's generator mask), "sizes" (generator
        layer widths after growing), "added" (units added per layer)}.
        """
        cfg = self.config
        classes = torch.unique(y)
        if bool((self.class_task[classes.to(self.class_task.device)] > 0).any()):
            raise ValueError("learn_task is class-incremental: every class in y must be new")
        past = self.seen_classes()
        net = self.generator.net
        task = net.begin_task()
        opt_g, opt_d = self._optimizers()
        batch = cfg["batch_size"]
        per_class = math.ceil(batch / len(classes))
        for step in range(steps):
            s = anneal(step / max(steps - 1, 1), cfg["s_max"])
            index = torch.randint(len(x), (batch,), device=x.device)
            real, labels = x[index], y[index]
            replay = self._replay(past, per_class)
            self._critic_step(opt_d, real, labels, task, s, replay)
            self._generator_step(opt_g, labels, task, s)
            if callback is not None:
                callback(step)
        net.end_task()
        self.class_task[classes.to(self.class_task.device)] = task
        added = net.expand() if cfg["expand"] else [0] * len(net.masked_layers())
        return {"task": task, "density": net.density(task), "sizes": net.sizes(), "added": added}

    def _optimizers(self):
        cfg = self.config
        layers = self.generator.net.masked_layers()
        embeddings = [layer.embedding for layer in layers if layer.embedding is not None]
        shared = [p for layer in layers for p in (layer.weight, layer.bias) if p is not None]
        # No weight decay, fresh state: reserved weights (zero gradient) cannot move.
        opt_g = torch.optim.Adam([{"params": shared}, {"params": embeddings, "lr": cfg["mask_lr"]}],
                                 lr=cfg["lr"], betas=(0.5, 0.9))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=cfg["lr"], betas=(0.5, 0.9))
        return opt_g, opt_d

    def _noise(self, n: int) -> Tensor:
        weight = self.generator.net.masked_layers()[0].weight
        return torch.randn(n, self.config["z_dim"], dtype=weight.dtype, device=weight.device)

    def _replay(self, past: Tensor, per_class: int):
        """(images, classes): `per_class` samples of each earlier class, each through its own task's mask."""
        if not len(past):
            return None
        classes = past.repeat_interleave(per_class)
        return self.sample(classes), classes

    def _critic_step(self, opt, real, labels, task, s, replay):
        cfg = self.config
        with torch.no_grad():
            fake = self.generator(self._noise(len(labels)), labels, task, s)
        inputs, targets = (real, labels) if replay is None else \
            (torch.cat([real, replay[0]]), torch.cat([labels, replay[1]]))
        score, logits = self.discriminator(inputs)
        score_fake, _ = self.discriminator(fake)
        loss = (score_fake.mean() - score[:len(real)].mean()
                + cfg["gp_weight"] * gradient_penalty(self.discriminator, real, fake)
                + F.cross_entropy(logits, targets))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def _generator_step(self, opt, labels, task, s):
        cfg = self.config
        self.discriminator.requires_grad_(False)
        fake = self.generator(self._noise(len(labels)), labels, task, s)
        score, logits = self.discriminator(fake)
        loss = (-score.mean() + cfg["aux_weight"] * F.cross_entropy(logits, labels)
                + self.generator.net.sparsity_loss(s, cfg["sparsity"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        self.discriminator.requires_grad_(True)

    # -- using it
    @torch.no_grad()
    def sample(self, y: Tensor, z: Optional[Tensor] = None) -> Tensor:
        """Images of the learned classes `y`, each generated with its class's task mask."""
        tasks = self.class_task[y]
        if bool((tasks == 0).any()):
            raise ValueError("sample: every class in y must have been learned")
        z = self._noise(len(y)) if z is None else z
        return self.generator(z, y, tasks)

    @torch.no_grad()
    def classify(self, x: Tensor) -> Tensor:
        """Predicted class of each image, among the classes learned so far."""
        seen = self.seen_classes()
        _, logits = self.discriminator(x)
        return seen[logits[:, seen].argmax(1)]

    def save(self, path) -> None:
        torch.save({"config": self.config, "state": self.state_dict()}, path)

    @classmethod
    def load(cls, path, map_location=None) -> "DGM":
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        model = cls(**checkpoint["config"])
        model.load_state_dict(checkpoint["state"])
        return model
