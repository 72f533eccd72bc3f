"""Benchmark cases: shapes, mask settings, and the tensors each one runs on.

Density is the fraction of weights visible to the measured task.  Owners are
drawn so that exactly that fraction is visible: visible weights are owned by
tasks 1..top_task (spread evenly), the others are pruned (0) or owned by a later
task (top_task + 1), both invisible.  The measured task is top_task, so the
`owner <= t` part of the visible test matters, not only `owner == t`.
Pattern `random` draws per weight, `block` per block of the GEMM view (out, in * kh * kw)
of the weight, the block `maskops.PackNet(structure="block")` prunes by default
(`maskops.packnet.net.default_block`: 32 x 512 on large layers).  In a mixed batch the rows are split into
`tasks` equal groups for tasks 1..tasks; task t then sees about density * t / tasks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

import torch

from maskops.packnet.net import default_block

PATTERNS = ("random", "block")
SINGLE_TASK = 2          # measured task of single-task cases (owners 1..2 visible)
DENSITIES = (0.125, 0.25, 0.5, 0.75, 1.0)   # the full sweep, for each pattern
# Arithmetic intensity below which a case is memory-bound and gets a bandwidth figure.
MEMORY_BOUND_FLOP_PER_BYTE = 64


@dataclass(frozen=True)
class Case:
    name: str
    op: str                      # "linear" or "conv2d"
    n: int                       # output features / channels
    k: int                       # input features / channels
    m: int = 0                   # linear: rows of x
    batch: int = 0               # conv2d: images
    size: int = 0                # conv2d: input height = width
    kernel: int = 3              # conv2d: square kernel, stride 1, 'same' padding
    settings: tuple = ()         # (pattern, density) pairs every sweep runs (the quick sweep: only these)
    tasks: int = 1               # > 1: the batch mixes this many tasks in equal groups
    channels_last: bool = False

    @property
    def mixed(self) -> bool:
        return self.tasks > 1

    @property
    def top_task(self) -> int:
        return self.tasks if self.mixed else SINGLE_TASK

    @property
    def weight_shape(self) -> tuple:
        if self.op == "linear":
            return (self.n, self.k)
        return (self.n, self.k, self.kernel, self.kernel)

    @property
    def x_shape(self) -> tuple:
        if self.op == "linear":
            return (self.m, self.k)
        return (self.batch, self.k, self.size, self.size)

    @property
    def y_numel(self) -> int:
        return self.m * self.n if self.op == "linear" else self.batch * self.n * self.size ** 2

    @property
    def flops(self) -> int:
        return 2 * self.y_numel * math.prod(self.weight_shape[1:])

    def bytes(self, dtype: torch.dtype, with_mask: bool = True) -> int:
        """Bytes an ideal kernel moves: weight (+ the uint8 owner) + x + y."""
        weights = math.prod(self.weight_shape)
        size = dtype.itemsize
        return weights * (size + with_mask) + (math.prod(self.x_shape) + self.y_numel) * size

    def memory_bound(self, dtype: torch.dtype) -> bool:
        return self.flops / self.bytes(dtype) < MEMORY_BOUND_FLOP_PER_BYTE

    def sweep_settings(self, quick: bool) -> list:
        """(pattern, density) pairs: the required ones, plus a density sweep unless quick."""
        extra = [] if quick else [(p, d) for p in PATTERNS for d in DENSITIES]
        return sorted(set(self.settings) | set(extra))


def _linear(m, n, k, settings, tasks=1, prefix="linear") -> Case:
    mixed = f"mixed{tasks}_" if tasks > 1 else ""
    return Case(f"{prefix}_{mixed}m{m}_n{n}_k{k}", "linear", n=n, k=k, m=m, settings=settings,
                tasks=tasks)


def _conv(channels, size, batch, settings, channels_last=False, prefix="conv") -> Case:
    return Case(f"{prefix}_3x3_c{channels}_h{size}_b{batch}", "conv2d", n=channels, k=channels,
                batch=batch, size=size, settings=settings, channels_last=channels_last)


TWO_THIRDS = (("random", 2 / 3),)
# Block ownership: a task that sees a quarter / half of the blocks (structured PackNet).
WITH_BLOCKS = TWO_THIRDS + (("block", 0.25), ("block", 0.5))

GPU_CASES = (
    _linear(16, 4096, 4096, (("random", 0.5), ("block", 0.25))),
    _linear(4096, 4096, 4096, (("random", 0.5),)),
    _conv(256, 14, 32, (("random", 0.5),), channels_last=True, prefix="conv_r50"),
    _conv(512, 7, 1, (("random", 0.5),), prefix="conv_r50"),
    _linear(64, 4096, 4096, (("random", 0.5),), tasks=8),
)

CPU_CASES = (
    _linear(1, 4096, 4096, WITH_BLOCKS),
    _linear(16, 4096, 4096, WITH_BLOCKS),
    _linear(256, 4096, 4096, TWO_THIRDS),
    _linear(16, 4096, 4096, TWO_THIRDS, tasks=4),
    _conv(128, 28, 4, TWO_THIRDS),
    _conv(256, 14, 1, (("block", 0.25), ("block", 0.5)), prefix="conv_r50"),
)


def cases_for(device: str) -> tuple:
    return GPU_CASES if device == "cuda" else CPU_CASES


def _visible_flags(count: int, density: float, generator: torch.Generator) -> torch.Tensor:
    """Exactly round(density * count) True values at random places."""
    flags = torch.zeros(count, dtype=torch.bool)
    flags[torch.randperm(count, generator=generator)[:round(density * count)]] = True
    return flags


def make_owner(weight_shape: tuple, pattern: str, density: float, top_task: int,
               generator: torch.Generator) -> torch.Tensor:
    """uint8 owner map (on the CPU) with `density` of the weights visible to `top_task`."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    rows, cols = weight_shape[0], math.prod(weight_shape[1:])
    block = (1, 1) if pattern == "random" else default_block(rows, cols)
    grid = (-(-rows // block[0]), -(-cols // block[1]))
    count = grid[0] * grid[1]
    visible = _visible_flags(count, density, generator)
    visible_owner = torch.randint(1, top_task + 1, (count,), generator=generator)
    hidden_owner = torch.randint(0, 2, (count,), generator=generator) * (top_task + 1)
    owner = torch.where(visible, visible_owner, hidden_owner).to(torch.uint8).reshape(grid)
    if pattern == "block":
        owner = owner.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    return owner.reshape(weight_shape).contiguous()


class Inputs(NamedTuple):
    x: torch.Tensor
    weight: torch.Tensor
    owner: torch.Tensor
    task: Union[int, torch.Tensor]      # the measured task, or per-row tasks of a mixed batch
    groups: tuple                       # ((row slice, task), ...): the task groups of the batch
    padding: Optional[int]              # conv2d only


def make_inputs(case: Case, pattern: str, density: float, dtype: torch.dtype, device,
                seed: int = 0) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    owner = make_owner(case.weight_shape, pattern, density, case.top_task, generator)
    weight = torch.randn(case.weight_shape, generator=generator) / math.sqrt(case.k)
    x = torch.randn(case.x_shape, generator=generator)
    rows = case.x_shape[0]
    if case.mixed:
        size = rows // case.tasks
        groups = tuple((slice(i * size, (i + 1) * size), i + 1) for i in range(case.tasks))
        task = torch.arange(1, case.tasks + 1, dtype=torch.int32).repeat_interleave(size).to(device)
    else:
        groups = ((slice(0, rows), case.top_task),)
        task = case.top_task
    x = x.to(device=device, dtype=dtype)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return Inputs(x, weight.to(device=device, dtype=dtype), owner.to(device), task, groups,
                  case.kernel // 2 if case.op == "conv2d" else None)
