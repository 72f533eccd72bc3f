"""The `triton` backend: the Triton kernels of maskops/triton on CUDA tensors, and on CPU
tensors through Triton's interpreter (TRITON_INTERPRET=1, set before triton is imported).

The interpreter computes bf16 wrongly, so there bf16 inputs are computed in fp32 and the
result rounded back; the backend still claims only fp32/fp16 on CPU.
"""
from __future__ import annotations

import functools
import os

import torch

from maskops.selection import Vis

try:
    import triton  # noqa: F401
except ImportError:
    triton = None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def available() -> bool:
    return triton is not None and (torch.cuda.is_available() or _interpreting())


def supports(device: torch.device, dtype: torch.dtype) -> bool:
    if not available():
        return False
    if device.type == "cuda":
        return dtype in (torch.float16, torch.bfloat16, torch.float32)
    return device.type == "cpu" and _interpreting() and dtype in (torch.float32, torch.float16)


def _kernels():
    from maskops.triton import conv, launch, matmul
    return conv, launch, matmul


def _in_compute_dtype(fn):
    """Run fn on its floating tensor arguments (and a floating mask) in the kernels' dtype."""
    @functools.wraps(fn)
    def run(*args):
        dtype = args[0].dtype
        work = _kernels()[1].compute_dtype(dtype)
        if work == dtype:
            return fn(*args)

        def cast(a):
            if isinstance(a, Vis):
                return a._replace(mask=cast(a.mask))
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                return a.to(work)
            return a
        return fn(*map(cast, args)).to(dtype)
    return run


@_in_compute_dtype
def linear_forward(x, w, vis, bias, out_mask):
    return _kernels()[2].linear_forward(x, w, vis, bias, out_mask)


@_in_compute_dtype
def linear_grad_input(grad, w, vis):
    return _kernels()[2].linear_grad_input(grad, w, vis)


@_in_compute_dtype
def linear_grad_weight(grad, x, vis):
    return _kernels()[2].linear_grad_weight(grad, x, vis)


@_in_compute_dtype
def conv2d_forward(x, w, vis, bias, out_mask, stride, padding, dilation, groups):
    return _kernels()[0].conv2d_forward(x, w, vis, bias, out_mask, stride, padding, dilation, groups)


@_in_compute_dtype
def conv2d_grad_input(grad, w, vis, input_shape, stride, padding, dilation, groups):
    return _kernels()[0].conv2d_grad_input(grad, w, vis, input_shape, stride, padding, dilation, groups)


@_in_compute_dtype
def conv2d_grad_weight(grad, x, vis, weight_shape, stride, padding, dilation, groups):
    return _kernels()[0].conv2d_grad_weight(grad, x, vis, weight_shape, stride, padding, dilation, groups)
