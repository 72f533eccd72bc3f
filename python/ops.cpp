// The schema of every maskops op, in one place.  Kernels: dispatch.cpp (CPU and CUDA, which
// run the native kernels of cpu_ops.cpp / cuda_ops.cpp or a Python backend), autograd.cpp
// (Autograd), owner_cache.cpp (pack_visible); fake kernels: maskops/fakes.py.
//
// Public ops (maskops.task_linear etc. call them):
//   task_*    the weights visible to `task` (0 < owner <= task) or, with a routing
//             (tasks, order, offsets from maskops.route), to each sample's task.
//   masked_*  weight * mask; `trainable` (bool/uint8) also restricts the weight gradient.
//   out_mask  (N,) or (B, N) multiplies the output channels.
//   backend   0: automatic; 1 torch, 2 cpu, 3 triton, 4 cuda (maskops.use_backend).
// Backward ops: `mode` is a csrc/modes.h Mode (dense, visible, trainable or mask) with the
// owner or mask it needs; the autograd kernels call them.
#include <torch/library.h>

TORCH_LIBRARY(maskops, m) {
  m.set_python_module("maskops.fakes");
  m.def(
      "task_linear(Tensor x, Tensor weight, Tensor owner, int task, Tensor? tasks, "
      "Tensor? order, Tensor? offsets, Tensor? bias, Tensor? out_mask, int backend) -> Tensor");
  m.def(
      "masked_linear(Tensor x, Tensor weight, Tensor mask, Tensor? trainable, Tensor? bias, "
      "Tensor? out_mask, int backend) -> Tensor");
  m.def(
      "task_conv2d(Tensor x, Tensor weight, Tensor owner, int task, Tensor? tasks, "
      "Tensor? order, Tensor? offsets, Tensor? bias, Tensor? out_mask, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups, int backend) -> Tensor");
  m.def(
      "masked_conv2d(Tensor x, Tensor weight, Tensor mask, Tensor? trainable, Tensor? bias, "
      "Tensor? out_mask, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "int backend) -> Tensor");

  m.def(
      "linear_grad_input(Tensor grad, Tensor weight, int mode, Tensor? owner, Tensor? mask, "
      "int task, Tensor? tasks, Tensor? order, Tensor? offsets, int backend) -> Tensor");
  m.def(
      "linear_grad_weight(Tensor grad, Tensor x, int mode, Tensor? owner, Tensor? mask, "
      "int task, Tensor? tasks, Tensor? order, Tensor? offsets, int backend) -> Tensor");
  m.def(
      "conv2d_grad_input(Tensor grad, Tensor weight, int mode, Tensor? owner, Tensor? mask, "
      "int task, Tensor? tasks, Tensor? order, Tensor? offsets, int[] input_shape, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, int backend) -> Tensor");
  m.def(
      "conv2d_grad_weight(Tensor grad, Tensor x, int mode, Tensor? owner, Tensor? mask, "
      "int task, Tensor? tasks, Tensor? order, Tensor? offsets, int[] weight_shape, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, int backend) -> Tensor");

  // The 1-bit visible map of a 2-D owner for one task (int32 words, 32 columns each).
  m.def("pack_visible(Tensor owner, int task) -> Tensor");
}
