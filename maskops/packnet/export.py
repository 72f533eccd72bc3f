"""A plain-torch copy of a PackNet model that computes one task: PackNet.export(t)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from maskops import reference
from maskops.conversion import WeightTransformingLayer
from maskops.nn import TaskMaskedLayer, owner_name
from maskops.packnet.modules import FreezableBatchNorm, TaskHeads


def plain_copy(model: nn.Module, task: int, values: dict[tuple[str, str], torch.Tensor]) -> nn.Module:
    """Deep copy of `model` for `task`, in eval mode, made of torch layers only.

    `values` maps (module name, tensor name) to the task's value of each per-task tensor.
    Masked layers become the class they were converted from, holding weight * visible(owner,
    task); a layer whose forward transforms its weight cannot take the mask folded in (the
    transform would see hidden places as zeros and fill them): ValueError.
    PackNet's BatchNorm becomes the torch class; TaskHeads becomes the task's nn.Linear.
    """
    transforming = [name for name, m in model.named_modules() if isinstance(m, WeightTransformingLayer)]
    if transforming:
        raise ValueError(f"export cannot fold the mask into layers whose forward transforms the "
                         f"weight: {', '.join(transforming)}")
    out = copy.deepcopy(model)
    with torch.no_grad():
        for (module_name, name), value in values.items():
            getattr(out.get_submodule(module_name), name).copy_(value)
        for name, module in list(out.named_modules()):
            if isinstance(module, TaskMaskedLayer):
                _plain_layer(module, task)
            elif isinstance(module, FreezableBatchNorm):
                module.__dict__.pop("frozen", None)
                module.__class__ = module.plain_class
            elif isinstance(module, TaskHeads):
                head = module.heads[task - 1]
                head.__class__ = nn.Linear
                if not name:
                    return head.eval()
                parent, _, child = name.rpartition(".")
                setattr(out.get_submodule(parent), child, head)
    return out.eval()


def _plain_layer(layer: nn.Module, task: int) -> None:
    for weight, owner in layer.masked_pairs():
        weight.mul_(reference.visible(owner, task).to(weight.dtype))
    if layer.out_mask is not None:
        weight = layer.weight
        # (x W^T + b) * m = x (m W)^T + m b for a per-channel mask; a per-sample one cannot be folded.
        if layer.out_mask.dim() != 1:
            raise ValueError("export needs out_mask to be None or per channel (1-D), not per sample")
        scale = layer.out_mask.to(weight.dtype)
        weight.mul_(scale.reshape(-1, *([1] * (weight.dim() - 1))))
        if layer.bias is not None:
            layer.bias.mul_(scale)
    for name in layer.masked_weights():
        del layer._buffers[owner_name(name)]
    for attribute in ("_task", "out_mask", "_owner_views"):
        layer.__dict__.pop(attribute, None)
    layer.__class__ = type(layer).plain_class
