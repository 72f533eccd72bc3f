"""Input checks shared by every op.  Each error names the argument at fault.

They run on real and on fake tensors (under torch.compile); checks that read
tensor values (task ids) run on real tensors only.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_TASK = 255


def _tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def tensors(**named) -> None:
    """Type-check arguments before they reach an op schema, whose own error names no argument."""
    for name, value in named.items():
        _tensor(name, value)


def optional_tensors(**named) -> None:
    for name, value in named.items():
        if value is not None:
            _tensor(name, value)


def _same_device(name: str, value: torch.Tensor, x: torch.Tensor) -> None:
    if value.device != x.device:
        raise RuntimeError(f"{name} is on {value.device} but x is on {x.device}; "
                           f"all tensors must be on one device")


def input_and_weight(x, weight, conv: bool) -> None:
    _tensor("x", x)
    _tensor("weight", weight)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be a floating tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight has dtype {weight.dtype} but x has {x.dtype}; they must match")
    _same_device("weight", weight, x)
    if conv:
        if weight.dim() != 4:
            raise ValueError(f"weight must be 4-D (out_channels, in_channels/groups, kh, kw), "
                             f"got shape {tuple(weight.shape)}")
        if x.dim() != 4:
            raise ValueError(f"x must be 4-D (batch, channels, height, width), got shape {tuple(x.shape)}")
    else:
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
        if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
            raise ValueError(f"x's last dimension ({x.shape[-1] if x.dim() else 'none'}) must equal "
                             f"weight's in_features ({weight.shape[1]})")


def owner(owner_map, weight) -> None:
    _tensor("owner", owner_map)
    if owner_map.dtype != torch.uint8:
        raise TypeError(f"owner must be a torch.uint8 tensor (task ids 0..255), got {owner_map.dtype}")
    if owner_map.shape != weight.shape:
        raise ValueError(f"owner has shape {tuple(owner_map.shape)} but weight has {tuple(weight.shape)}; "
                         f"they must match")
    _same_device("owner", owner_map, weight)


def mask(mask_tensor, weight, name: str = "mask") -> None:
    _tensor(name, mask_tensor)
    if mask_tensor.shape != weight.shape:
        raise ValueError(f"{name} has shape {tuple(mask_tensor.shape)} but weight has "
                         f"{tuple(weight.shape)}; they must match")
    if mask_tensor.is_floating_point():
        if mask_tensor.dtype != weight.dtype:
            raise TypeError(f"floating {name} has dtype {mask_tensor.dtype} but weight has "
                            f"{weight.dtype}; they must match")
    elif mask_tensor.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"{name} must be bool, uint8 or floating, got {mask_tensor.dtype}")
    _same_device(name, mask_tensor, weight)


def task(task_value: int, tasks: Optional[torch.Tensor], batch: int, device) -> None:
    if tasks is None:
        if isinstance(task_value, bool) or not isinstance(task_value, int):
            raise TypeError(f"task must be an int or an integer tensor, got {type(task_value).__name__}")
        if not 1 <= task_value <= MAX_TASK:
            raise ValueError(f"task must be in 1..{MAX_TASK}, got {task_value}")
        return
    _tensor("task", tasks)
    if tasks.is_floating_point() or tasks.is_complex() or tasks.dtype == torch.bool:
        raise TypeError(f"task tensor must have an integer dtype, got {tasks.dtype}")
    if tasks.dim() != 1 or tasks.shape[0] != batch:
        raise ValueError(f"task tensor must have shape (batch,) = ({batch},), got {tuple(tasks.shape)}")
    if tasks.device != device and tasks.device.type != "cpu":
        raise RuntimeError(f"task is on {tasks.device} but x is on {device}")
    if tasks.numel() and not isinstance(tasks, torch._subclasses.FakeTensor) \
            and not isinstance(tasks, torch._subclasses.functional_tensor.FunctionalTensor):
        low, high = int(tasks.min()), int(tasks.max())
        if low < 1 or high > MAX_TASK:
            raise ValueError(f"task values must be in 1..{MAX_TASK}, got values in {low}..{high}")


def bias(bias_tensor, x, out_features: int) -> None:
    if bias_tensor is None:
        return
    _tensor("bias", bias_tensor)
    if bias_tensor.shape != (out_features,):
        raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias_tensor.shape)}")
    if bias_tensor.dtype != x.dtype:
        raise TypeError(f"bias has dtype {bias_tensor.dtype} but x has {x.dtype}; they must match")
    _same_device("bias", bias_tensor, x)


def out_mask(mask_tensor, x, out_features: int, batch: Optional[int]) -> None:
    if mask_tensor is None:
        return
    _tensor("out_mask", mask_tensor)
    shapes = [(out_features,)] + ([(batch, out_features)] if batch is not None else [])
    if tuple(mask_tensor.shape) not in shapes:
        raise ValueError(f"out_mask must have shape {' or '.join(map(str, shapes))}, "
                         f"got {tuple(mask_tensor.shape)}")
    if mask_tensor.is_floating_point() and mask_tensor.dtype != x.dtype:
        raise TypeError(f"floating out_mask has dtype {mask_tensor.dtype} but x has {x.dtype}")
    if not mask_tensor.is_floating_point() and mask_tensor.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"out_mask must be bool, uint8 or floating, got {mask_tensor.dtype}")
    _same_device("out_mask", mask_tensor, x)


def conv_geometry(x, weight, stride: Sequence[int], padding: Sequence[int],
                  dilation: Sequence[int], groups: int) -> None:
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    for name, value, low in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if len(value) != 2 or any((not isinstance(v, int)) or v < low for v in value):
            raise ValueError(f"{name} must be an int >= {low} or a pair of them, got {tuple(value)}")
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    if out_channels % groups:
        raise ValueError(f"weight's out_channels ({out_channels}) must be divisible by groups ({groups})")
    if x.shape[1] != in_per_group * groups:
        raise ValueError(f"x has {x.shape[1]} channels but weight expects "
                         f"{in_per_group} * groups ({groups}) = {in_per_group * groups}")
    for axis in (0, 1):
        extent = x.shape[2 + axis] + 2 * padding[axis]
        window = dilation[axis] * (weight.shape[2 + axis] - 1) + 1
        if extent < window:
            raise ValueError(f"x's spatial size {tuple(x.shape[2:])} with padding {tuple(padding)} is "
                             f"smaller than the dilated kernel ({window} along dim {2 + axis})")
