"""The `cpu` and `cuda` backends: the hand-written kernels of the extension `maskops._C`.

Both call the same `torch.ops.maskops.native_*` ops (schemas in python/ops.cpp); the
dispatcher runs the CPU or the CUDA kernel by the tensors' device.  Without a built
extension the backends report `available() == False`.  The fake kernels of the native ops
are registered here, so they trace under torch.compile and pass torch.library.opcheck.
"""
from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format

from maskops import plan
from maskops.backends import Vis
from maskops.ops import conv_output_shape

try:
    from maskops import _C
except ImportError:  # the extension is not built
    _C = None

# Up to this many rows the CUDA forward streams the weight once with a 1-bit map per
# task, built once per owner version and task (maskops.plan); measured on an H100 it
# reaches cached-cuBLAS speed at M=16, where the uint8 owner reaches 0.75x.
BITS_MAX_ROWS = 64

MODE = {"dense": 0, "visible": 1, "trainable": 2, "mask": 3}
DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float16, torch.bfloat16, torch.float32),
}


def compiled(name: str) -> bool:
    """Whether maskops._C holds the kernels of backend `name`."""
    return _C is not None and (name == "cpu" or (name == "cuda" and bool(_C.with_cuda)))


def _selection(vis: Vis):
    return MODE[vis.mode], vis.owner, vis.mask, int(vis.task), vis.row_task


class NativeBackend:
    """The backend interface of maskops.backends over the native ops, for one device type."""

    def __init__(self, name: str):
        if name not in DTYPES:
            raise ValueError(f"no native backend {name!r}; known: {sorted(DTYPES)}")
        self.name = name

    def __repr__(self):
        return f"NativeBackend({self.name!r})"

    def available(self) -> bool:
        return compiled(self.name) and (self.name == "cpu" or torch.cuda.is_available())

    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        return device.type == self.name and dtype in DTYPES[self.name]

    def linear_forward(self, x, w, vis, bias, out_mask):
        if (self.name == "cuda" and vis.mode == "visible" and vis.row_task is None
                and x.shape[0] <= BITS_MAX_ROWS):
            owner, task = vis.owner, int(vis.task)
            bits = plan.cached(owner, ("bits", task), lambda: plan.pack_visible(owner, task))
            return torch.ops.maskops.native_linear_forward_bits(x, w, bits, bias, out_mask)
        return torch.ops.maskops.native_linear_forward(x, w, *_selection(vis), bias, out_mask)

    def linear_grad_input(self, grad, w, vis):
        return torch.ops.maskops.native_linear_grad_input(grad, w, *_selection(vis))

    def linear_grad_weight(self, grad, x, vis):
        return torch.ops.maskops.native_linear_grad_weight(grad, x, *_selection(vis))

    def conv2d_forward(self, x, w, vis, bias, out_mask, stride, padding, dilation, groups):
        return torch.ops.maskops.native_conv2d_forward(
            x, w, *_selection(vis), bias, out_mask, list(stride), list(padding), list(dilation),
            groups)

    def conv2d_grad_input(self, grad, w, vis, input_shape, stride, padding, dilation, groups):
        return torch.ops.maskops.native_conv2d_grad_input(
            grad, w, *_selection(vis), list(input_shape), list(stride), list(padding),
            list(dilation), groups)

    def conv2d_grad_weight(self, grad, x, vis, weight_shape, stride, padding, dilation, groups):
        return torch.ops.maskops.native_conv2d_grad_weight(
            grad, x, *_selection(vis), list(weight_shape), list(stride), list(padding),
            list(dilation), groups)


def backend(name: str) -> NativeBackend:
    return NativeBackend(name)


# ----------------------------------------------------------------------------- fake kernels


def _empty(shape, like):
    """An uninitialized tensor in the memory format the kernels give (that of `like`)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device,
                       memory_format=suggest_memory_format(like))


def _register_fakes():
    fake = torch.library.register_fake

    @fake("maskops::native_linear_forward")
    def _(x, weight, mode, owner, mask, task, row_task, bias, out_mask):
        return x.new_empty(x.shape[0], weight.shape[0])

    @fake("maskops::native_linear_grad_input")
    def _(grad, weight, mode, owner, mask, task, row_task):
        return grad.new_empty(grad.shape[0], weight.shape[1])

    @fake("maskops::native_linear_grad_weight")
    def _(grad, x, mode, owner, mask, task, row_task):
        return x.new_empty(grad.shape[1], x.shape[1])

    @fake("maskops::native_conv2d_forward")
    def _(x, weight, mode, owner, mask, task, row_task, bias, out_mask, stride, padding,
          dilation, groups):
        shape = conv_output_shape(x.shape, weight.shape, stride, padding, dilation)
        return _empty(shape, x)

    @fake("maskops::native_conv2d_grad_input")
    def _(grad, weight, mode, owner, mask, task, row_task, input_shape, stride, padding,
          dilation, groups):
        return _empty(input_shape, grad)

    @fake("maskops::native_conv2d_grad_weight")
    def _(grad, x, mode, owner, mask, task, row_task, weight_shape, stride, padding, dilation,
          groups):
        return x.new_empty(weight_shape)

    if not _C.with_cuda:  # the ops below are defined by the CUDA part of the extension
        return

    @fake("maskops::native_linear_forward_bits")
    def _(x, weight, bits, bias, out_mask):
        return x.new_empty(x.shape[0], weight.shape[0])

    @fake("maskops::native_mask_weight")
    def _(weight, mode, owner, mask, task):
        return torch.empty_like(weight)


if _C is not None:
    _register_fakes()
