"""Where the ops hand calls of the Python backends (torch, triton): the native op kernels
(python/python_backends.cpp) call `run` with the checked, laid-out arguments of the kernel
interface (python/kernels.h), and it calls the backend's function of the same name with a
`maskops.selection.Vis`.
"""
from __future__ import annotations

import torch

from maskops import backends
from maskops.modes import Mode, _C
from maskops.routing import Routing
from maskops.selection import Vis

_NAMES = {i: name for name, i in backends.IDS.items()}


def _backend(backend: int, device: torch.device, dtype: torch.dtype):
    if backend == backends.AUTOMATIC:
        name = "triton" if device.type == "cuda" and backends.supports("triton", device, dtype) \
            else "torch"
    else:
        name = _NAMES[backend]
        if not backends.supports(name, device, dtype):
            raise RuntimeError(f"maskops backend {name!r} does not support {dtype} tensors "
                               f"on {device.type}")
    return backends.python_backend(name)


def run(op: str, backend: int, selection: tuple, rows_per_sample: int, *args):
    """backend.<op>(first, second, vis, *rest); conv ops end with (stride, padding, dilation,
    groups), passed as separate arguments."""
    mode, owner, mask, task, task_ids, order, offsets = selection
    vis = Vis(Mode(mode), owner, mask, task)
    if task_ids is not None:
        vis = vis.routed(Routing(task_ids, order, offsets), rows_per_sample)
    first, second, *rest = args
    if op.startswith("conv2d"):
        stride, padding, dilation, groups = rest[-1]
        rest = rest[:-1] + [tuple(stride), tuple(padding), tuple(dilation), groups]
    return getattr(_backend(backend, first.device, first.dtype), op)(first, second, vis, *rest)


_C.set_python_bridge(run)
