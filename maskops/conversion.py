"""maskops.convert: turn the Linear/Conv2d/MultiheadAttention layers of a model into masked
layers, in place, and say what was left.

Exact nn.Linear / nn.Conv2d / nn.MultiheadAttention become MaskedLinear / MaskedConv2d /
MaskedMultiheadAttention.  Subclasses are converted too:
- a subclass whose forward is the torch one (torch's NonDynamicallyQuantizableLinear, or one
  listed in PLAIN_FORWARD, such as timm's Linear) becomes a class derived from both the masked
  layer and the subclass;
- any other Linear/Conv2d subclass (its forward transforms the weight or the input: timm's
  StdConv2d, ScaledStdConv2d, Conv2dSame) keeps its own forward, run on weight * visible, and
  each linear/conv2d call in it with a weight of the layer's shape runs as the masked op (see
  WeightTransformingLayer).
Modules that pass their children's weights to F.linear instead of calling the children
(torchvision's Swin attention, listed in READS_CHILD_WEIGHTS) run their forward with those
calls turned into the children's masked ops (ChildWeightReader).
A class with `maskops_keep_plain = True` is left plain on purpose (PackNet's task heads).
Layer weights that no masked op serves (nn.Embedding, nn.Conv1d, ...) are reported as left;
other parameters of two or more dimensions (class tokens, position embeddings, bias tables) as
unmasked.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from maskops import ops, reference
from maskops.attention import MaskedMultiheadAttention
from maskops.nn import MaskedConv2d, MaskedLinear, TaskMaskedLayer
from maskops.routing import Routing

_EXACT = {nn.Linear: MaskedLinear, nn.Conv2d: MaskedConv2d,
          nn.MultiheadAttention: MaskedMultiheadAttention}

# Subclasses that override forward but compute exactly what the torch layer computes (timm's
# Linear only adds a cast under TorchScript), by module and qualified name: converted like the
# torch classes, with no per-call cost.
PLAIN_FORWARD = {"timm.layers.linear.Linear"}

# Modules whose forward hands their children's weights to F.linear/F.conv2d without calling the
# children, by module and qualified name.
READS_CHILD_WEIGHTS = {"torchvision.models.swin_transformer.ShiftedWindowAttention",
                       "torchvision.models.swin_transformer.ShiftedWindowAttentionV2"}


class ConversionReport(NamedTuple):
    """What convert did to a model, by module or parameter name."""
    converted: dict  # name -> the masked class
    left: dict       # name -> why no masked op serves this layer weight
    kept: dict       # name -> the class that asked to stay plain
    unmasked: dict   # name -> the class holding a parameter that is not a layer weight

    def __str__(self) -> str:
        lines = [f"converted {len(self.converted)} layers"]
        lines += [f"left {name}: {why}" for name, why in self.left.items()]
        lines += [f"kept plain {name}: {cls}" for name, cls in self.kept.items()]
        lines += [f"not a layer weight, unmasked: {name} ({cls})" for name, cls in self.unmasked.items()]
        return "\n".join(lines)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class _MaskedCalls(TorchFunctionMode):
    """linear/conv2d calls whose weight `layer_of(weight)` names a masked layer run as that
    layer's task_linear/task_conv2d, with its owner, task and out_mask."""

    def __init__(self, layer_of):
        super().__init__()
        self.layer_of = layer_of

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        call = _CALLS.get(func)
        if call is not None:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            layer = None if weight is None else self.layer_of(weight)
            if layer is not None:
                return call(layer, *args, **kwargs)
        return func(*args, **kwargs)


def _linear(layer, input, weight, bias=None):
    return ops.task_linear(input, weight, layer.owner, layer.task, bias, out_mask=layer.out_mask)


def _conv2d(layer, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return ops.task_conv2d(input, weight, layer.owner, layer.task, bias, stride, padding, dilation,
                           groups, out_mask=layer.out_mask)


_CALLS = {torch.nn.functional.linear: _linear, torch.nn.functional.conv2d: _conv2d}


class ChildWeightReader:
    """Mixin for a module whose forward passes its children's weights to F.linear/F.conv2d
    (READS_CHILD_WEIGHTS): those calls run as the children's masked ops.  The children are
    converted as usual and take the task set on them."""

    def forward(self, *args, **kwargs):
        children = {id(m.weight): m for m in self.modules()
                    if isinstance(m, (MaskedLinear, MaskedConv2d))}
        with _MaskedCalls(lambda weight: children.get(id(weight))):
            return super().forward(*args, **kwargs)


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
            with _MaskedCalls(lambda w: self if w.shape == self.owner.shape else None):
                return super().forward(*args, **kwargs)
        finally:
            self._parameters["weight"] = weight


_SUBCLASSES: dict = {}


def _computes_plain(cls: type, base: type) -> bool:
    if _qualified(cls) in PLAIN_FORWARD:
        return True
    if base is nn.Conv2d and cls._conv_forward is not nn.Conv2d._conv_forward:
        return False
    return cls.forward is base.forward


def masked_class(cls: type) -> Optional[type]:
    """The class a module of class `cls` becomes under convert, or None."""
    if cls in _EXACT:
        return _EXACT[cls]
    if issubclass(cls, (TaskMaskedLayer, ChildWeightReader)) or getattr(cls, "maskops_keep_plain", False):
        return None
    if cls not in _SUBCLASSES:
        base = next((b for b in _EXACT if issubclass(cls, b)), None)
        if _qualified(cls) in READS_CHILD_WEIGHTS:
            mixin = ChildWeightReader
        elif base is None or (base is nn.MultiheadAttention and not _computes_plain(cls, base)):
            return None
        else:
            mixin = _EXACT[base] if _computes_plain(cls, base) else WeightTransformingLayer
        _SUBCLASSES[cls] = type(f"Masked{cls.__name__}", (mixin, cls),
                                {"__module__": __name__, "plain_class": cls})
    return _SUBCLASSES[cls]


def _plan(model: nn.Module) -> tuple:
    """[(module, masked class)] to convert, and the report of the converted model."""
    todo, converted, left, kept, unmasked = [], {}, {}, {}, {}
    # An attention layer left plain reads out_proj.weight without calling out_proj.
    read_directly = {id(m.out_proj) for m in model.modules()
                     if isinstance(m, nn.MultiheadAttention) and masked_class(type(m)) is None
                     and not isinstance(m, TaskMaskedLayer)}
    for name, module in model.named_modules():
        cls = type(module)
        target = masked_class(cls)
        masked = ()
        if id(module) in read_directly:
            left[name] = "its MultiheadAttention (left: own forward) reads out_proj.weight directly"
            continue
        elif isinstance(module, (TaskMaskedLayer, ChildWeightReader)):
            converted[name] = cls.__name__
            masked = module.masked_weights() if isinstance(module, TaskMaskedLayer) else ()
        elif target is not None:
            todo.append((module, target))
            converted[name] = target.__name__
            masked = target.masked_weights(module) if issubclass(target, TaskMaskedLayer) else ()
        elif getattr(cls, "maskops_keep_plain", False):
            kept[name] = cls.__name__
            continue
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() < 2 or pname in masked:
                continue
            full = f"{name}.{pname}" if name else pname
            if pname.endswith("weight") and not converted.get(name):
                left[full] = f"{cls.__name__}: no masked op serves it"
            else:
                unmasked[full] = cls.__name__
    return todo, ConversionReport(converted, left, kept, unmasked)


def conversion_report(model: nn.Module) -> ConversionReport:
    """What convert(model) converted (or would convert) and what it leaves, with reasons."""
    return _plan(model)[1]


def convert(model: nn.Module, *, strict: bool = False) -> nn.Module:
    """Turn every nn.Linear / nn.Conv2d / nn.MultiheadAttention of `model` (subclasses
    included) into a masked layer, in place, and return `model`.

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
        if isinstance(module, TaskMaskedLayer):  # an attention layer converted its out_proj
            continue
        module.__class__ = target
        if isinstance(module, TaskMaskedLayer):
            module._init_task_state()
    return model
