"""A three-task masked MLP: per-task outputs, a mixed-task batch, and naive-vs-maskops timings."""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import benchmark

import maskops
from maskops import reference


def _model(width: int) -> nn.Module:
    model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, 10))
    maskops.convert(model)
    generator = torch.Generator().manual_seed(0)
    for layer in model:
        if isinstance(layer, maskops.nn.TaskMaskedLayer):
            # PackNet-style ownership: each weight belongs to one of tasks 1..3.
            layer.owner.copy_(torch.randint(1, 4, layer.weight.shape, generator=generator))
    return model.eval()


def _median_ms(fn) -> float:
    return benchmark.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.3).median * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maskops demo basic", description=__doc__)
    parser.add_argument("--size", type=int, default=2048, help="N = K of the timed linear layer")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = _model(256)
    x = torch.randn(4, 64)
    print(f"maskops {maskops.__version__}; backends here: {', '.join(maskops.available_backends())}")
    print("\nOne shared MLP, three tasks (task t sees the weights of tasks 1..t):")
    with torch.no_grad():
        for task in (1, 2, 3):
            maskops.set_task(model, task)
            print(f"  task {task}: logits[0, :5] = {[round(v, 3) for v in model(x)[0, :5].tolist()]}")
        tasks = torch.tensor([3, 1, 2, 1])
        maskops.set_task(model, tasks)
        mixed = model(x)
        maskops.set_task(model, 1)
        same = torch.allclose(mixed[1], model(x[1:2])[0], atol=1e-5)
        print(f"  mixed batch, tasks {tasks.tolist()} in one call: row 1 equals the task-1 output: {same}")

    n = args.size
    weight = torch.randn(n, n)
    owner = torch.randint(0, 3, (n, n), dtype=torch.uint8)  # task 2 sees ~2/3 of the weights
    cached = weight * reference.visible(owner, 2)
    print(f"\nLinear N=K={n}, fp32, task 2 sees {reference.visible(owner, 2).float().mean():.0%} "
          f"of the weights (median ms, lower is better):")
    print(f"  {'M':>5} {'naive':>9} {'cached':>9} " + " ".join(f"{b:>9}" for b in _timed_backends()))
    with torch.no_grad():
        for m in (1, 16, 128):
            xm = torch.randn(m, n)
            row = [_median_ms(lambda: F.linear(xm, weight * reference.visible(owner, 2))),
                   _median_ms(lambda: F.linear(xm, cached))]
            for name in _timed_backends():
                with maskops.use_backend(name):
                    row.append(_median_ms(lambda: maskops.task_linear(xm, weight, owner, 2)))
            print(f"  {m:>5} " + " ".join(f"{v:9.3f}" for v in row))
    print("\nnaive: F.linear(x, weight * visible) built every call; cached: a pre-masked dense copy.")
    return 0


def _timed_backends() -> list[str]:
    return [b for b in maskops.available_backends() if b in ("torch", "cpu")]
