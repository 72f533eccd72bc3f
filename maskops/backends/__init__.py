"""Backend registry: which implementation runs a maskops op.

A backend is a module with the attributes below.  The op layer (`maskops.ops`)
validates and normalizes every input before it calls a backend, so a backend
sees only well-formed tensors:

    name: str
    available() -> bool                      # importable / compiled at all
    supports(device, dtype) -> bool          # can run tensors of this device and dtype

    linear_forward(x, w, vis, bias, out_mask) -> y
        x (M, K), w (N, K), both contiguous, same dtype and device; bias (N,) or None;
        out_mask (N,) or (M, N) or None, dtype of x.  y (M, N), dtype of x.
        vis.mode is 'visible' or 'mask'.
    linear_grad_input(grad, w, vis) -> (M, K)     grad @ w_eff;  vis.mode 'visible' or 'mask'
    linear_grad_weight(grad, x, vis) -> (N, K)    (grad^T x) restricted by vis;
        vis.mode 'trainable', 'mask' or 'dense'.  With vis.row_task the weight gradient
        of row i is restricted by that row's task: sum_i outer(grad_i, x_i) * (owner == row_task[i]).

    conv2d_forward(x, w, vis, bias, out_mask, stride, padding, dilation, groups) -> y
        x (B, C, H, W) in any memory format; w (Cout, Cin/groups, kh, kw) contiguous;
        stride, padding, dilation are (int, int); padding is symmetric and explicit;
        out_mask (Cout,) or (B, Cout) or None.  vis.row_task, if set, is per image (B,).
    conv2d_grad_input(grad, w, vis, input_shape, stride, padding, dilation, groups)
    conv2d_grad_weight(grad, x, vis, weight_shape, stride, padding, dilation, groups)

`Vis` says which weights take part:
    'visible'   w_eff = w * (0 < owner <= task)
    'trainable' w_eff = w * (owner == task)
    'mask'      w_eff = w * mask        (mask uint8 0/1, or floating in w's dtype)
    'dense'     w_eff = w
task is an int in 1..255 used when row_task is None; row_task is an int32 tensor on
the device of x giving each row's (linear) or image's (conv) task.
"""
from __future__ import annotations

import contextlib
import importlib
import threading
from typing import NamedTuple, Optional

import torch

MODES = ("visible", "trainable", "mask", "dense")


class Vis(NamedTuple):
    mode: str
    owner: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    task: int = 1
    row_task: Optional[torch.Tensor] = None


# Module names in order of preference: the first available one that supports a
# tensor's device and dtype is the default for it.
_PREFERENCE = {
    "cuda": ["cuda", "triton", "torch"],
    "cpu": ["cpu", "torch"],
}
_MODULES = {
    "torch": "maskops.backends.torch_backend",
    "cpu": "maskops.backends.native",
    "cuda": "maskops.backends.native",
    "triton": "maskops.backends.triton_backend",
}
_loaded: dict[str, object] = {}
_state = threading.local()


def _load(name: str):
    if name not in _loaded:
        module = importlib.import_module(_MODULES[name])
        _loaded[name] = module.backend(name) if hasattr(module, "backend") else module
    return _loaded[name]


def get(name: str):
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; known: {sorted(_MODULES)}")
    return _load(name)


def available_backends() -> list[str]:
    """Backends that can run on this machine, e.g. ['torch', 'cpu', 'triton', 'cuda']."""
    names = []
    for name in ("torch", "cpu", "triton", "cuda"):
        try:
            if _load(name).available():
                names.append(name)
        except ImportError:
            continue
    return names


@contextlib.contextmanager
def use_backend(name: str):
    """Run maskops ops in this thread with backend `name` (None: automatic choice)."""
    if name is not None:
        if name not in _MODULES:
            raise ValueError(f"unknown backend {name!r}; known: {sorted(_MODULES)}")
        if name not in available_backends():
            raise RuntimeError(f"maskops backend {name!r} is not available here; "
                               f"available: {available_backends()}")
    previous = getattr(_state, "name", None)
    _state.name = name
    try:
        yield
    finally:
        _state.name = previous


def current_name() -> Optional[str]:
    return getattr(_state, "name", None)


def select(device: torch.device, dtype: torch.dtype):
    """The backend that runs an op on tensors of this device and dtype."""
    name = current_name()
    if name is not None:
        backend = get(name)
        if not backend.supports(device, dtype):
            raise RuntimeError(f"maskops backend {name!r} does not support {dtype} tensors "
                               f"on {device.type}")
        return backend
    for candidate in _PREFERENCE.get(device.type, ["torch"]):
        try:
            backend = _load(candidate)
        except ImportError:
            continue
        if backend.available() and backend.supports(device, dtype):
            return backend
    return _load("torch")
