// Schemas of the native maskops ops.  Each device registers its kernels for them
// (cpu_ops.cpp, cuda_ops.cpp); fake kernels live in maskops/backends/native.py.
//
// mode: 0 dense, 1 visible (0 < owner <= task), 2 trainable (owner == task), 3 mask
// (multiply by mask: uint8 0/1 or floating of the weight's dtype).  row_task: int32 task per
// row (linear) or image (conv), or None for `task` everywhere.
#include <torch/library.h>

// The Python custom ops of maskops/ops.py add to the same namespace as fragments; that
// works whichever loads first (tests/test_native.py checks both orders).
TORCH_LIBRARY(maskops, m) {
  m.set_python_module("maskops.backends.native");
  m.def(
      "native_linear_forward(Tensor x, Tensor weight, int mode, Tensor? owner, Tensor? mask, "
      "int task, Tensor? row_task, Tensor? bias, Tensor? out_mask) -> Tensor");
  m.def(
      "native_linear_grad_input(Tensor grad, Tensor weight, int mode, Tensor? owner, "
      "Tensor? mask, int task, Tensor? row_task) -> Tensor");
  m.def(
      "native_linear_grad_weight(Tensor grad, Tensor x, int mode, Tensor? owner, Tensor? mask, "
      "int task, Tensor? row_task) -> Tensor");
  m.def(
      "native_conv2d_forward(Tensor x, Tensor weight, int mode, Tensor? owner, Tensor? mask, "
      "int task, Tensor? row_task, Tensor? bias, Tensor? out_mask, int[] stride, int[] padding, "
      "int[] dilation, int groups) -> Tensor");
  m.def(
      "native_conv2d_grad_input(Tensor grad, Tensor weight, int mode, Tensor? owner, "
      "Tensor? mask, int task, Tensor? row_task, int[] input_shape, int[] stride, "
      "int[] padding, int[] dilation, int groups) -> Tensor");
  m.def(
      "native_conv2d_grad_weight(Tensor grad, Tensor x, int mode, Tensor? owner, Tensor? mask, "
      "int task, Tensor? row_task, int[] weight_shape, int[] stride, int[] padding, "
      "int[] dilation, int groups) -> Tensor");
}
