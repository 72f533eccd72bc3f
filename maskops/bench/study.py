"""Deployment study: one multi-task network served three ways, end to end.

Every conv/linear layer gets PackNet owners: after each task, `ratio` of the units that task
trained are pruned and freed for the next one (`structure`: single weights, blocks or output
channels, chosen as maskops.PackNet chooses them, on random weights), so task k owns
(1 - ratio) of what was free before it and the last task sees 1 - ratio**tasks of the
weights.  The last task is measured (every task with each_task), served by
  naive    a model whose layers compute weight * visible on every forward
           (a torch parametrization, as a peer implementation would);
  cached   a plain model per task holding pre-masked dense weights (T copies);
  <name>   the model after maskops.convert, owners set, under maskops.use_backend(name).
Weight memory counts conv/linear weights only: naive and maskops keep the weights
and a uint8 owner map; cached keeps one dense copy per task.  On CUDA the inputs are
channels_last and so are the baselines' weights (cuDNN's fast layout); maskops
layers keep their (out, in, kh, kw) weights.
"""
from __future__ import annotations

import copy
import math
import statistics
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

import maskops
from maskops import reference
from maskops.bench.impls import Impl, backend_names
from maskops.bench.progress import progress
from maskops.bench.sweep import dtype_name, measure
from maskops.packnet.net import default_block, pruned_units


def packnet_owner(shape, ratio: float, tasks: int, generator: torch.Generator,
                  structure: str = "weight") -> torch.Tensor:
    """The owners PackNet leaves after `tasks` tasks, each pruning `ratio` of its units."""
    rows, columns = shape[0], math.prod(shape[1:])
    unit = {"weight": (1, 1), "channel": (1, columns)}.get(structure) or default_block(rows, columns)
    owner = torch.zeros(shape, dtype=torch.uint8)
    free = torch.ones(shape, dtype=torch.bool)
    for task in range(1, tasks + 1):
        magnitude = torch.rand(shape, generator=generator)
        taken = free & ~pruned_units(magnitude, free, unit, ratio)
        owner[taken] = task
        free &= ~taken
    return owner


def masked_layers(model: nn.Module) -> list:
    """(name, layer) of the layers maskops.convert masks; weights it leaves (attention read
    directly, embeddings) stay unmasked in every variant alike."""
    return [(name, model.get_submodule(name)) for name in maskops.conversion_report(model).converted]


class VisibleWeight(nn.Module):
    """Parametrization: the weight times the task's visible set, rebuilt on every access."""

    def __init__(self, owner: torch.Tensor, task: int):
        super().__init__()
        self.register_buffer("owner", owner)
        self.task = task

    def forward(self, weight):
        return weight * reference.visible(self.owner, self.task)


def naive_model(base: nn.Module, owners: dict, task: int) -> nn.Module:
    model = copy.deepcopy(base)
    for name, layer in masked_layers(model):
        parametrize.register_parametrization(layer, "weight", VisibleWeight(owners[name], task))
    return model


@torch.no_grad()
def cached_model(base: nn.Module, owners: dict, task: int) -> nn.Module:
    model = copy.deepcopy(base)
    for name, layer in masked_layers(model):
        layer.weight.mul_(reference.visible(owners[name], task))
    return model


@torch.no_grad()
def maskops_model(base: nn.Module, owners: dict, task: int) -> nn.Module:
    model = copy.deepcopy(base)
    names = dict(masked_layers(model))
    maskops.convert(model)
    for name, layer in names.items():
        layer.owner.copy_(owners[name])
    return maskops.set_task(model, task)


def weight_mb(base: nn.Module, dtype: torch.dtype, tasks: int) -> dict:
    numel = sum(layer.weight.numel() for _, layer in masked_layers(base))
    with_owner = numel * (dtype.itemsize + 1) / 2 ** 20
    return {"naive": with_owner, "cached": tasks * numel * dtype.itemsize / 2 ** 20,
            "maskops": with_owner}


def _forward(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def run():
        with torch.inference_mode():
            return model(x)
    return run


def _variants(base, owners, task, device, dtype, layout, backends, compile_too) -> list:
    """(impl name, model, backend) for every way of serving `task`."""
    baselines = [("naive", naive_model(base, owners, task)), ("cached", cached_model(base, owners, task))]
    variants = [(name, model.to(memory_format=layout), None) for name, model in baselines]
    converted = maskops_model(base, owners, task)
    variants += [(name, converted, name) for name in backends]
    if compile_too:
        variants += [(f"{name}+compile", torch.compile(model, dynamic=False), backend)
                     for name, model, backend in variants]
    return variants


def run(base: nn.Module, model_name: str, *, tasks: int, ratios: Sequence[float],
        batches: Sequence[int], resolution: int, device: str, dtype: torch.dtype,
        timer: Callable, compile_too: bool = False, impls: Optional[Sequence[str]] = None,
        show_progress: bool = True, structure: str = "weight", each_task: bool = False,
        rounds: int = 3) -> list:
    """Result rows: latency and weight memory of each variant, per ratio, measured task and
    batch size (the median of `rounds` interleaved measurements)."""
    base = base.to(device=device, dtype=dtype).eval()
    layout = torch.channels_last if device == "cuda" else torch.contiguous_format
    backends = [n for n in backend_names(device, dtype) if not impls or n in impls]
    memory = weight_mb(base, dtype, tasks)
    generator = torch.Generator().manual_seed(0)
    results = []
    measured = range(1, tasks + 1) if each_task else [tasks]
    count = len(ratios) * len(measured) * len(batches) * (2 + len(backends)) * (2 if compile_too else 1)
    with progress(count, show_progress, desc=model_name) as bar:
        for ratio, task in [(r, t) for r in ratios for t in measured]:
            if task == measured[0]:
                owners = {name: packnet_owner(layer.weight.shape, ratio, tasks, generator,
                                              structure).to(device)
                          for name, layer in masked_layers(base)}
            visible = sum(int(reference.visible(o, task).sum()) for o in owners.values())
            density = visible / sum(o.numel() for o in owners.values())
            variants = _variants(base, owners, task, device, dtype, layout, backends, compile_too)
            for batch in batches:
                x = torch.randn(batch, 3, resolution, resolution, device=device, dtype=dtype)
                x = x.contiguous(memory_format=layout)
                expected = _forward(variants[1][1], x)()
                chosen = [v for v in variants if not impls or v[0].removesuffix("+compile") in impls]
                bar.update(len(variants) - len(chosen))
                for (name, _, backend), row in zip(chosen, _interleaved(chosen, x, timer, expected, rounds)):
                    row.update({"op": "model", "case": f"{model_name}_b{batch}_r{resolution}_task{task}",
                                "dtype": dtype_name(dtype), "pattern": f"packnet{ratio:g}-{structure}",
                                "density": density, "impl": name, "task": task,
                                "weight_mb": memory["maskops" if backend else name.removesuffix("+compile")]})
                    results.append(row)
                    bar.update()
    return results


def _interleaved(variants, x, timer, expected, rounds: int) -> list:
    """One measurement row per variant: each timed once per round, the variants in turn, so
    that a drift of the machine's speed hits all of them alike; the median over rounds."""
    per_round = [[measure(Impl(name, _forward(model, x), backend), timer, expected)
                  for name, model, backend in variants] for _ in range(rounds)]
    rows = []
    for measured in zip(*per_round):
        row = dict(measured[0])
        times = [m["median_ms"] for m in measured]
        if None not in times:
            row["median_ms"] = statistics.median(times)
        row["rounds"] = rounds
        rows.append(row)
    return rows
