"""maskops.convert: turn the Linear/Conv2d layers of a model into masked layers, in place, and
say what was left.

Exact nn.Linear / nn.Conv2d become MaskedLinear / MaskedConv2d.  Subclasses are converted too:
- a subclass whose forward is the torch one (torch's NonDynamicallyQuantizableLinear, or one
  listed in PLAIN_FORWARD, such as timm's Linear) becomes a class derived from both the masked
  layer and the subclass;
- any other subclass (its forward transforms the weight or the input: timm's StdConv2d,
  ScaledStdConv2d, Conv2dSame) keeps its own forward, run on weight * visible, and each
  linear/conv2d call in it with a weight of the layer's shape runs as the masked op (see
  WeightTransformingLayer).
A class with `maskops_keep_plain = True` is left plain on purpose (PackNet's task heads).
Weights that no masked op serves are reported: nn.MultiheadAttention's projections (its forward
reads in_proj_weight and out_proj.weight directly, so out_proj is not converted either), and
every other module holding a parameter of two or more dimensions (nn.Embedding, nn.Conv1d, ...).
"""
from __future__ import annotations

import warnings
from typing import NamedTuple, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from maskops import ops, reference
from maskops.nn import MaskedConv2d, MaskedLinear, TaskMaskedLayer
from maskops.routing import Routing

_EXACT = {nn.Linear: MaskedLinear, nn.Conv2d: MaskedConv2d}

# Subclasses that override forward but compute exactly what the torch layer computes (timm's
# Linear only adds a cast under TorchScript), by module and qualified name: converted like the
# torch classes, with no per-call cost.
PLAIN_FORWARD = {"timm.layers.linear.Linear"}


class ConversionReport(NamedTuple):
    """What convert did to a model, by module or parameter name."""
    converted: dict  # name -> the masked class
    left: dict       # name -> why no masked op serves it
    kept: dict       # name -> the class that asked to stay plain

    def __str__(self) -> str:
        lines = [f"converted {len(self.converted)} layers"]
        lines += [f"left {name}: {why}" for name, why in self.left.items()]
        lines += [f"kept plain {name}: {cls}" for name, cls in self.kept.items()]
        return "\n".join(lines)


class _MaskedCalls(TorchFunctionMode):
    """Inside a WeightTransformingLayer's forward: linear/conv2d calls with a weight of the
    layer's shape run as task_linear/task_conv2d with the layer's owner and task."""

    def __init__(self, layer: "WeightTransformingLayer"):
        super().__init__()
        self.layer = layer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        call = _CALLS.get(func)
        if call is not None:
            out = call(self.layer, *args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


def _linear(layer, input, weight, bias=None):
    if weight.shape != layer.owner.shape:
        return None
    return ops.task_linear(input, weight, layer.owner, layer.task, bias, out_mask=layer.out_mask)


def _conv2d(layer, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    if weight.shape != layer.owner.shape:
        return None
    return ops.task_conv2d(input, weight, layer.owner, layer.task, bias, stride, padding, dilation,
                           groups, out_mask=layer.out_mask)


_CALLS = {torch.nn.functional.linear: _linear, torch.nn.functional.conv2d: _conv2d}


class WeightTransformingLayer(TaskMaskedLayer):
    """Mixin for a Linear/Conv2d subclass with its own forward.

    The forward runs with the weight replaced by weight * visible(owner, task), so a transform
    of the weight (StdConv2d standardizes it) sees only what the task sees and the task's output
    depends on nothing else; the linear/conv2d it calls with a weight of the layer's shape runs
    as the masked op, which zeroes what the transform put at hidden places and skips what the
    task cannot see.  Costs one masked copy of the weight per call; one task per call (a
    per-sample task has no single visible set to multiply by).  Not thread-safe: the weight is
    swapped on the module for the duration of the call.
    """

    def forward(self, *args, **kwargs):
        if isinstance(self.task, Routing):
            raise NotImplementedError(
                f"{type(self).plain_class.__name__} transforms its weight in forward, so it serves "
                f"one task per call (an int task), not per-sample tasks")
        weight = self._parameters["weight"]
        self._parameters["weight"] = weight * reference.visible(self.owner, self.task).to(weight.dtype)
        try:
            with _MaskedCalls(self):
                return super().forward(*args, **kwargs)
        finally:
            self._parameters["weight"] = weight


_SUBCLASSES: dict = {}


def _computes_plain(cls: type, base: type) -> bool:
    if f"{cls.__module__}.{cls.__qualname__}" in PLAIN_FORWARD:
        return True
    if base is nn.Conv2d and cls._conv_forward is not nn.Conv2d._conv_forward:
        return False
    return cls.forward is base.forward


def masked_class(cls: type) -> Optional[type]:
    """The class a module of class `cls` becomes under convert, or None."""
    if cls in _EXACT:
        return _EXACT[cls]
    if issubclass(cls, TaskMaskedLayer) or getattr(cls, "maskops_keep_plain", False):
        return None
    base = next((b for b in _EXACT if issubclass(cls, b)), None)
    if base is None:
        return None
    if cls not in _SUBCLASSES:
        mixin = _EXACT[base] if _computes_plain(cls, base) else WeightTransformingLayer
        _SUBCLASSES[cls] = type(f"Masked{cls.__name__}", (mixin, cls),
                                {"__module__": __name__, "plain_class": cls})
    return _SUBCLASSES[cls]


def _read_directly(model: nn.Module) -> dict:
    """Modules whose parent reads their weight without calling them, by id -> why."""
    found = {}
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            found[id(module.out_proj)] = ("nn.MultiheadAttention reads out_proj.weight directly; "
                                          "attention projections are not masked")
    return found


def _plan(model: nn.Module) -> tuple:
    """[(module, masked class)] to convert, and the report of the converted model."""
    read_directly = _read_directly(model)
    todo, converted, left, kept = [], {}, {}, {}
    for name, module in model.named_modules():
        cls = type(module)
        if isinstance(module, TaskMaskedLayer):
            converted[name] = cls.__name__
            continue
        if id(module) in read_directly:
            left[name] = read_directly[id(module)]
            continue
        target = masked_class(cls)
        if target is not None:
            todo.append((module, target))
            converted[name] = target.__name__
        elif getattr(cls, "maskops_keep_plain", False):
            kept[name] = cls.__name__
        else:
            for pname, p in module.named_parameters(recurse=False):
                if p.dim() >= 2:
                    left[f"{name}.{pname}" if name else pname] = (
                        f"{cls.__name__}: no masked op serves it")
    return todo, ConversionReport(converted, left, kept)


def conversion_report(model: nn.Module) -> ConversionReport:
    """What convert(model) converted (or would convert) and what it leaves, with reasons."""
    return _plan(model)[1]


def convert(model: nn.Module, *, strict: bool = False) -> nn.Module:
    """Turn every nn.Linear / nn.Conv2d of `model` (subclasses included) into a masked layer,
    in place, and return `model`.

    The modules keep their identity, Parameters, hooks and device; each gets an `owner` of 1s,
    so the model's outputs are unchanged.  Weights left unmasked (see conversion_report) give a
    warning; with strict=True a ValueError instead, before anything is changed.
    """
    todo, report = _plan(model)
    if report.left:
        message = "maskops.convert left weights that no masked op serves:\n" + "\n".join(
            f"  {name}: {why}" for name, why in report.left.items())
        if strict:
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
    for module, target in todo:
        module.__class__ = target
        module._init_task_state()
    return model
