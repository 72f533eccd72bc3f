"""Deployment study: one multi-task network served three ways, end to end.

Owners come from maskops.PackNet itself: T tasks in turn take the free weights, get new
random values (standing in for training) and prune `ratio` of their units by magnitude
(`structure`: single weights, blocks or output channels), so task k owns (1 - ratio) of
what was free before it and the last task sees 1 - ratio**tasks of the weights.  Every
weight maskops.convert masks (conv, linear, attention projections) is owned.  Served by
  naive    a model whose layers compute weight * visible on every forward
           (a torch parametrization, as a peer implementation would);
  cached   a plain model per task holding pre-masked dense weights (T copies);
  <name>   the model after maskops.convert, owners set, under maskops.use_backend(name).
The last task is measured (every task with each_task); with `mixed`, a batch whose samples
cycle through the T tasks: naive and cached loop over the task groups (the parametrization
switched, or the task's copy), `<name>-loop` loops with int tasks, and `<name>` serves the
whole batch at once through maskops.serving.Runner (routing included in the timing).
Weight memory counts the masked weights only: naive and maskops keep the weights and a
uint8 owner map; cached keeps one dense copy per task.  The inputs are channels_last and so
are the baselines' weights, the fast layout of cuDNN and of oneDNN on the CPU (resnet18,
batch 16, AMD EPYC with AVX-512, 2 threads: 206 ms against 283 ms for the cached copies).
On the CPU the maskops model takes that layout too (model.to(memory_format=...), as a user
would: its kernels mask channels_last weights as they lie); on CUDA its layers keep the
(out, in, kh, kw) weights its kernels read.
"""
from __future__ import annotations

import copy
import statistics
import warnings
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

import maskops
from maskops import reference
from maskops.bench.impls import Impl, backend_names
from maskops.bench.progress import progress
from maskops.bench.sweep import dtype_name, measure
from maskops.nn import TaskMaskedLayer
from maskops.serving import Runner


def _masked_pairs(model: nn.Module) -> dict:
    """{(layer name, weight name): (weight, owner)} of a converted model."""
    return {(name, weight_name): pair for name, layer in model.named_modules()
            if isinstance(layer, TaskMaskedLayer)
            for weight_name, pair in zip(layer.masked_weights(), layer.masked_pairs())}


@torch.no_grad()
def packnet_owners(base: nn.Module, ratio: float, tasks: int, seed: int = 0,
                   structure: str = "weight") -> dict:
    """{(layer name, weight name): owner} that maskops.PackNet leaves on a copy of `base`
    after `tasks` tasks, each pruning `ratio` of its units of freshly drawn random weights."""
    model = copy.deepcopy(base).to("cpu", torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with warnings.catch_warnings():  # about parameters that stay per task: not studied here
        warnings.simplefilter("ignore")
        net = maskops.PackNet(model, ratio, bias="frozen", batchnorm="frozen", structure=structure)
    pairs = _masked_pairs(model)
    for task in range(1, tasks + 1):
        net.begin_task()
        for weight, owner in pairs.values():
            mine = owner == task
            weight[mine] = torch.randn(int(mine.sum()), generator=generator)
        net.prune()
        net.end_task()
    net.close()
    return {key: owner.clone() for key, (_, owner) in pairs.items()}


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
    for (name, weight_name), owner in owners.items():
        parametrize.register_parametrization(model.get_submodule(name), weight_name,
                                             VisibleWeight(owner, task))
    return model


def set_naive_task(model: nn.Module, task: int) -> None:
    for module in model.modules():
        if isinstance(module, VisibleWeight):
            module.task = task


@torch.no_grad()
def cached_model(base: nn.Module, owners: dict, task: int) -> nn.Module:
    model = copy.deepcopy(base)
    for (name, weight_name), owner in owners.items():
        getattr(model.get_submodule(name), weight_name).mul_(reference.visible(owner, task))
    return model


@torch.no_grad()
def maskops_model(base: nn.Module, owners: dict, task: int) -> nn.Module:
    model = maskops.convert(copy.deepcopy(base))
    for key, (_, owner) in _masked_pairs(model).items():
        owner.copy_(owners[key])
    return maskops.set_task(model, task)


def weight_mb(owners: dict, dtype: torch.dtype, tasks: int) -> dict:
    numel = sum(owner.numel() for owner in owners.values())
    with_owner = numel * (dtype.itemsize + 1) / 2 ** 20
    return {"naive": with_owner, "cached": tasks * numel * dtype.itemsize / 2 ** 20,
            "maskops": with_owner}


def _inference(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def run():
        with torch.inference_mode():
            return fn(x)
    return run


def _by_groups(groups: list, serve: Callable[[int, torch.Tensor], torch.Tensor]):
    """A batch served one task group at a time: serve(task, rows) per group, reassembled."""
    def run(x):
        out = None
        for task, index in groups:
            y = serve(task, x[index])
            out = y.new_empty((x.shape[0], *y.shape[1:])) if out is None else out
            out[index] = y
        return out
    return run


def _routed(model: nn.Module, tasks: torch.Tensor):
    runner = Runner(model, batch_sizes=[len(tasks)])  # routes once per batch, for every layer
    return lambda x: runner(x, tasks)


def _served(name: str, model, tasks: Optional[torch.Tensor], groups: list):
    """The callable x -> output that serves a batch with this variant."""
    if tasks is None:
        return model
    if name.startswith("naive"):
        def naive(t, rows):
            set_naive_task(model, t)
            return model(rows)
        return _by_groups(groups, naive)
    if name.startswith("cached"):
        return _by_groups(groups, lambda t, rows: model[t](rows))
    if "-loop" in name:
        return _by_groups(groups, lambda t, rows: maskops.set_task(model, t)(rows))
    return _routed(model, tasks)


def _variants(base, owners, task, tasks, layout, backends, compile_too, mixed) -> list:
    """(impl name, model, backend): model is a module, or for cached with `mixed` {task: module}."""
    naive = naive_model(base, owners, task).to(memory_format=layout)
    cached_tasks = range(1, tasks + 1) if mixed else [task]
    cached = {t: cached_model(base, owners, t).to(memory_format=layout) for t in cached_tasks}
    variants = [("naive", naive, None), ("cached", cached if mixed else cached[task], None)]
    converted = maskops_model(base, owners, task)
    if next(base.parameters()).device.type == "cpu":
        converted = converted.to(memory_format=layout)
    variants += [(name, converted, name) for name in backends]
    if mixed:
        variants += [(f"{name}-loop", converted, name) for name in backends]
    if compile_too:
        def compiled(model):
            if isinstance(model, dict):
                return {t: torch.compile(m, dynamic=False) for t, m in model.items()}
            return torch.compile(model, dynamic=False)
        variants += [(f"{name}+compile", compiled(model), backend) for name, model, backend in variants]
    return variants


def run(base: nn.Module, model_name: str, *, tasks: int, ratios: Sequence[float],
        batches: Sequence[int], resolution: int, device: str, dtype: torch.dtype,
        timer: Callable, compile_too: bool = False, impls: Optional[Sequence[str]] = None,
        show_progress: bool = True, structure: str = "weight", each_task: bool = False,
        mixed: bool = False, rounds: int = 3) -> list:
    """Result rows: latency and weight memory of each variant, per ratio, measured task (or
    mixed batch) and batch size (the median of `rounds` interleaved measurements)."""
    base = base.to(device=device, dtype=dtype).eval()
    layout = torch.channels_last
    backends = [n for n in backend_names(device, dtype) if not impls or n in impls]
    results = []
    measured = [tasks] if mixed or not each_task else range(1, tasks + 1)
    per_setting = (2 + len(backends) * (2 if mixed else 1)) * (2 if compile_too else 1)
    with progress(len(ratios) * len(measured) * len(batches) * per_setting, show_progress,
                  desc=model_name) as bar:
        for ratio in ratios:
            owners = {key: owner.to(device)
                      for key, owner in packnet_owners(base, ratio, tasks, structure=structure).items()}
            memory = weight_mb(owners, dtype, tasks)
            for task in measured:
                visible = sum(int(reference.visible(o, task).sum()) for o in owners.values())
                density = visible / sum(o.numel() for o in owners.values())
                variants = _variants(base, owners, task, tasks, layout, backends, compile_too, mixed)
                chosen = [v for v in variants
                          if not impls or v[0].removesuffix("+compile").removesuffix("-loop") in impls]
                for batch in batches:
                    x = torch.randn(batch, 3, resolution, resolution, device=device, dtype=dtype)
                    x = x.contiguous(memory_format=layout)
                    sample_tasks = torch.arange(batch) % tasks + 1 if mixed else None
                    groups = [] if not mixed else [
                        (t, (sample_tasks == t).nonzero().flatten().to(device))
                        for t in range(1, tasks + 1) if (sample_tasks == t).any()]
                    served = [(name, _served(name, model, sample_tasks, groups), backend)
                              for name, model, backend in chosen]
                    expected = _inference(_served("cached", variants[1][1], sample_tasks, groups), x)()
                    bar.update(len(variants) - len(chosen))
                    case = f"{model_name}_b{batch}_r{resolution}_" + (f"mixed{tasks}" if mixed else f"task{task}")
                    for (name, _, backend), row in zip(served, _interleaved(served, x, timer, expected, rounds)):
                        row.update({"op": "model", "case": case, "dtype": dtype_name(dtype),
                                    "pattern": f"packnet{ratio:g}-{structure}", "density": density,
                                    "impl": name, "task": "mixed" if mixed else task, "batch": batch,
                                    "weight_mb": memory["maskops" if backend else
                                                        name.removesuffix("+compile")]})
                        results.append(row)
                        bar.update()
    return results


def _interleaved(variants, x, timer, expected, rounds: int) -> list:
    """One measurement row per variant: each timed once per round, the variants in turn, so
    that a drift of the machine's speed hits all of them alike; the median over rounds."""
    per_round = [[measure(Impl(name, _inference(serve, x), backend), timer, expected)
                  for name, serve, backend in variants] for _ in range(rounds)]
    rows = []
    for measured in zip(*per_round):
        row = dict(measured[0])
        times = [m["median_ms"] for m in measured]
        if None not in times:
            row["median_ms"] = statistics.median(times)
        row["rounds"] = rounds
        rows.append(row)
    return rows
