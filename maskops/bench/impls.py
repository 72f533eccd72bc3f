"""The implementations compared on each case.

naive   F.linear / F.conv2d on weight * visible, the mask built from the owner map every
        call: what every public PackNet/DGM implementation does.
cached  the same on a pre-masked dense copy per task: the speed ceiling for unstructured
        masks, at T times the weight memory.  For a mixed batch: one call per task group.
loop    a mixed batch served by one naive call per task group (the baseline there).
<name>  a maskops backend, through the public op under maskops.use_backend(name).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

import maskops
from maskops import backends, reference
from maskops.bench.cases import Case, Inputs


class Impl(NamedTuple):
    name: str
    fn: Callable[[], torch.Tensor]
    backend: Optional[str]          # run under maskops.use_backend(backend)


def backend_names(device, dtype: torch.dtype) -> list:
    """maskops backends available here that run tensors of this device and dtype."""
    device = torch.device(device)
    return [name for name in maskops.available_backends() if backends.supports(name, device, dtype)]


def impl_names(case: Case, device, dtype: torch.dtype) -> list:
    baseline = ["loop"] if case.mixed else ["naive"]
    return baseline + ["cached"] + backend_names(device, dtype)


def baseline_name(case: Case) -> str:
    return "loop" if case.mixed else "naive"


def _dense_op(case: Case, inputs: Inputs):
    """(x, weight) -> y with torch's dense op."""
    if case.op == "linear":
        return F.linear
    return lambda x, w: F.conv2d(x, w, padding=inputs.padding)


def _masked(owner: torch.Tensor, task: int, weight: torch.Tensor) -> torch.Tensor:
    return weight * reference.visible(owner, task)


def build(name: str, case: Case, inputs: Inputs) -> Impl:
    """A zero-argument callable computing the case's output with implementation `name`."""
    x, weight, owner = inputs.x, inputs.weight, inputs.owner
    baseline = name in ("naive", "loop", "cached")
    if case.channels_last and (baseline or x.device.type == "cpu"):
        # cuDNN and oneDNN want channels_last weights with channels_last inputs: the baselines
        # get them, and on the CPU maskops too, whose kernels mask them as they lie (what
        # model.to(memory_format=torch.channels_last) gives a converted model).
        weight, owner = (t.contiguous(memory_format=torch.channels_last) for t in (weight, owner))
    if baseline:
        dense = _dense_op(case, inputs)
    if name == "naive":
        task = inputs.groups[0][1]
        return Impl(name, lambda: dense(x, _masked(owner, task, weight)), None)
    if name == "loop":
        groups = inputs.groups
        return Impl(name, lambda: torch.cat(
            [dense(x[rows], _masked(owner, task, weight)) for rows, task in groups]), None)
    if name == "cached":
        copies = [(rows, _masked(owner, task, weight)) for rows, task in inputs.groups]
        if len(copies) == 1:
            (_, copy), = copies
            return Impl(name, lambda: dense(x, copy), None)
        return Impl(name, lambda: torch.cat([dense(x[rows], copy) for rows, copy in copies]), None)
    if name not in backends.available_backends():
        raise ValueError(f"unknown or unavailable implementation {name!r}")
    # A mixed batch is routed once, as a model's set_task does: the timed call reads nothing
    # on the host and can be captured in a CUDA graph.
    task = maskops.route(inputs.task, x.device) if isinstance(inputs.task, torch.Tensor) else inputs.task
    if case.op == "linear":
        fn = lambda: maskops.task_linear(x, weight, owner, task)  # noqa: E731
    else:
        fn = lambda: maskops.task_conv2d(x, weight, owner, task, padding=inputs.padding)  # noqa: E731
    return Impl(name, fn, name)
