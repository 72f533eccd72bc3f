"""`maskops bench --overhead`: what a call costs on the host, where users meet the ops.

Side by side in one process, on the same inputs.  Each pair (maskops, what it replaces) is
timed in alternating blocks of calls, so that drift of the machine (a second process, clock
changes) hits both alike; a row gives the median per-call time of each and the median of the
per-block ratios:
  op           each public op on a tiny problem vs the plain torch op on a pre-masked weight
  fwd+bwd      forward and backward of the same vs naive masking (weight * visible each call)
  model        a converted 10-layer 64-wide MLP (batch 1) and a small CNN vs the plain model,
               eager (training mode, grad on, as a user calls it), eager under no_grad, and
               under torch.compile
  host reads   aten::item / _local_scalar_dense / nonzero / unique events in a mixed-task
               forward of both models after warm-up (the batch routed once by set_task)
Kernels this small take a few microseconds: what is left is the op layer's own cost.
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import maskops
from maskops import reference

HOST_READS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::unique",
              "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive")
Fn = Callable[[], object]


class Pair(NamedTuple):
    us: float           # median time of one maskops call
    baseline_us: float  # median time of one call of what it replaces
    ratio: float        # median of the per-block ratios


def _block_us(fn: Fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def side_by_side(fn: Fn, baseline: Fn, rounds: int = 21, block_ms: float = 5.0) -> Pair:
    """fn and baseline timed in alternating blocks of about block_ms each."""
    for _ in range(10):
        fn(), baseline()
    calls = max(1, int(block_ms * 1e3 / max(_block_us(fn, 5), 1e-3)))
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(_block_us(fn, calls))
        theirs.append(_block_us(baseline, calls))
    return Pair(statistics.median(ours), statistics.median(theirs),
                statistics.median(a / b for a, b in zip(ours, theirs)))


Timer = Callable[[Fn, Fn], Pair]


def _row(group: str, case: str, impl: str, pair: Pair) -> dict:
    return {"group": group, "case": case, "impl": impl, "median_us": pair.us,
            "baseline_us": pair.baseline_us, "ratio": pair.ratio}


def _owner(shape, tasks=3):
    return torch.randint(1, tasks + 1, shape, dtype=torch.uint8)


def op_calls(timer: Timer) -> list:
    """Each public op, (4, 64) x (64, 64) and a 16-channel 3x3 conv, vs F.linear / F.conv2d."""
    x, w, owner = torch.randn(4, 64), torch.randn(64, 64), _owner((64, 64))
    xc, wc, oc = torch.randn(1, 16, 8, 8), torch.randn(16, 16, 3, 3), _owner((16, 16, 3, 3))
    w2, wc2 = w * reference.visible(owner, 2), wc * reference.visible(oc, 2)
    mask, maskc = owner > 1, oc > 1
    def plain_linear():
        return F.linear(x, w2)

    def plain_conv():
        return F.conv2d(xc, wc2, padding=1)
    return [_row("op", case, "maskops", timer(fn, plain)) for case, fn, plain in (
        ("task_linear (4, 64) x (64, 64)", lambda: maskops.task_linear(x, w, owner, 2), plain_linear),
        ("masked_linear (4, 64) x (64, 64)", lambda: maskops.masked_linear(x, w, mask), plain_linear),
        ("task_conv2d 16 ch 3x3, 8x8", lambda: maskops.task_conv2d(xc, wc, oc, 2, padding=1), plain_conv),
        ("masked_conv2d 16 ch 3x3, 8x8", lambda: maskops.masked_conv2d(xc, wc, maskc, padding=1),
         plain_conv))]


def forward_backward(timer: Timer) -> list:
    """Forward + backward (x and weight need gradients) vs naive masking."""
    x = torch.randn(4, 64, requires_grad=True)
    w = torch.randn(64, 64, requires_grad=True)
    owner = _owner((64, 64))
    xc = torch.randn(1, 16, 8, 8, requires_grad=True)
    wc = torch.randn(16, 16, 3, 3, requires_grad=True)
    oc = _owner((16, 16, 3, 3))

    # What peers do: the mask multiplied in on every call (the gradient then reaches every
    # weight; maskops restricts it to the trainable ones at no extra cost).
    def naive_linear():
        F.linear(x, w * reference.visible(owner, 2)).sum().backward()

    def naive_conv():
        F.conv2d(xc, wc * reference.visible(oc, 2), padding=1).sum().backward()
    return [
        _row("fwd+bwd", "task_linear (4, 64) x (64, 64)", "maskops",
             timer(lambda: maskops.task_linear(x, w, owner, 2).sum().backward(), naive_linear)),
        _row("fwd+bwd", "task_conv2d 16 ch 3x3, 8x8", "maskops",
             timer(lambda: maskops.task_conv2d(xc, wc, oc, 2, padding=1).sum().backward(), naive_conv)),
    ]


def mlp() -> nn.Module:
    return nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.ReLU()) for _ in range(10)])


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))


MODELS = {"MLP 10 x 64, batch 1": (mlp, (1, 64)), "CNN 2 conv + linear, 1 x 3 x 16 x 16": (cnn, (1, 3, 16, 16))}


def _converted(model: nn.Module) -> nn.Module:
    converted = maskops.convert(copy.deepcopy(model))
    for module in converted.modules():
        if isinstance(module, maskops.nn.TaskMaskedLayer):
            module.owner.copy_(_owner(module.weight.shape))
    return maskops.set_task(converted, 3)  # every weight visible: outputs equal the plain model's


def models(timer: Timer, compile_too: bool = True) -> list:
    rows = []
    for name, (build, shape) in MODELS.items():
        plain = build()
        converted = _converted(plain)
        x = torch.randn(shape)
        torch.testing.assert_close(converted(x), plain(x))
        rows.append(_row("model", name, "eager", timer(lambda: converted(x), lambda: plain(x))))
        with torch.no_grad():
            rows.append(_row("model", name, "eager, no_grad",
                             timer(lambda: converted(x), lambda: plain(x))))
        if compile_too:
            fast_plain, fast_converted = torch.compile(plain), torch.compile(converted, fullgraph=True)
            rows.append(_row("model", name, "torch.compile",
                             timer(lambda: fast_converted(x), lambda: fast_plain(x))))
            with torch.no_grad():
                torch.testing.assert_close(fast_converted(x), fast_plain(x), rtol=1e-4, atol=1e-4)
                rows.append(_row("model", name, "torch.compile, no_grad",
                                 timer(lambda: fast_converted(x), lambda: fast_plain(x))))
    return rows


def host_reads() -> list:
    """Host reads of device data in a mixed-task forward of each converted model."""
    rows = []
    for name, (build, shape) in MODELS.items():
        model = _converted(build())
        x = torch.randn((8,) + shape[1:])
        maskops.set_task(model, torch.tensor([1, 2, 3, 3, 2, 1, 1, 2]))
        model(x)  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(x)
        reads = [event.name for event in prof.events() if event.name in HOST_READS]
        rows.append({"group": "host reads", "case": f"{name.split(',')[0]}, 8 samples of 3 tasks",
                     "impl": "maskops", "reads": len(reads), "ops": sorted(set(reads))})
    return rows


def run(timer: Timer, compile_too: bool = True) -> list:
    return op_calls(timer) + forward_backward(timer) + models(timer, compile_too) + host_reads()


def format_table(rows: list) -> str:
    lines = ["| what | case | maskops | plain / naive | ratio |", "|---|---|---|---|---|"]
    for row in rows:
        if row["group"] == "host reads":
            lines.append(f"| host reads | {row['case']} | {row['reads']} | | |")
            continue
        what = row["group"] if row["impl"] == "maskops" else f"{row['group']}, {row['impl']}"
        lines.append(f"| {what} | {row['case']} | {row['median_us']:.1f} us | "
                     f"{row['baseline_us']:.1f} us | {row['ratio']:.2f}x |")
    return "\n".join(lines)
