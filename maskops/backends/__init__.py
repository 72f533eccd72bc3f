"""Backends: which implementation runs a maskops op.

    torch   maskops/backends/torch_backend.py: the reference semantics through ATen (any device)
    cpu     csrc/cpu through maskops._C (CPU, float32/float64/bfloat16/float16)
    triton  maskops/triton through maskops/backends/triton_backend.py (CUDA; CPU tensors
            under TRITON_INTERPRET=1)
    cuda    csrc/cuda through maskops._C (CUDA, when built with it)

Every op takes a `backend` argument; the public functions pass the one `use_backend` set in
this thread (0, automatic, when none is set).  Automatic runs the device's native kernels
(`cpu`, `cuda`) where they support the dtype and otherwise hands the call to Python
(`bridge.py`), which runs `triton` on CUDA tensors where it is available and `torch` elsewhere.
A torch.compile'd function keeps the backend it was traced with.
"""
from __future__ import annotations

import contextlib
import importlib
import threading
from typing import Optional

import torch

from maskops.modes import _C

NAMES = ("torch", "cpu", "triton", "cuda")
IDS = {name: _C.backends[name] for name in NAMES}  # the `backend` argument of the ops
AUTOMATIC = _C.backends["automatic"]

# The dtypes the native kernels run (csrc/cpu, csrc/cuda); other dtypes go to a Python backend.
NATIVE_DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
    "cuda": (torch.float16, torch.bfloat16, torch.float32),
}
_PYTHON_MODULES = {"torch": "maskops.backends.torch_backend",
                   "triton": "maskops.backends.triton_backend"}


class _State(threading.local):
    backend = AUTOMATIC  # the `backend` argument of this thread's op calls


_state = _State()


def python_backend(name: str):
    """The module of a Python backend ('torch' or 'triton')."""
    return importlib.import_module(_PYTHON_MODULES[name])


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; known: {sorted(NAMES)}")


def available(name: str) -> bool:
    """Whether backend `name` can run on this machine at all."""
    _check_name(name)
    if name == "cpu":
        return True
    if name == "cuda":
        return bool(_C.with_cuda) and torch.cuda.is_available()
    try:
        return python_backend(name).available()
    except ImportError:
        return False


def supports(name: str, device, dtype: torch.dtype) -> bool:
    """Whether backend `name` runs tensors of this device and dtype here."""
    device = torch.device(device)
    if name in NATIVE_DTYPES:
        return available(name) and device.type == name and dtype in NATIVE_DTYPES[name]
    return available(name) and python_backend(name).supports(device, dtype)


def available_backends() -> list[str]:
    """Backends that can run on this machine, e.g. ['torch', 'cpu', 'triton', 'cuda']."""
    return [name for name in NAMES if available(name)]


@contextlib.contextmanager
def use_backend(name: Optional[str]):
    """Run maskops ops in this thread with backend `name` (None: automatic choice)."""
    if name is not None:
        _check_name(name)
        if not available(name):
            raise RuntimeError(f"maskops backend {name!r} is not available here; "
                               f"available: {available_backends()}")
    previous = current()
    _state.backend = AUTOMATIC if name is None else IDS[name]
    try:
        yield
    finally:
        _state.backend = previous


def current() -> int:
    """The `backend` argument ops get in this thread."""
    return _state.backend
