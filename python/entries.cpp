// Python's direct way into the public ops: each entry calls the op through the dispatcher, as
// torch.ops.maskops.<op> does, without torch.ops' Python layer (about 2 us a call on the CPU
// this was measured on, as much as a small layer's kernel).  maskops/ops.py uses them in eager
// mode; torch.compile traces the torch.ops spelling instead.
#include <torch/extension.h>

#include "entries.h"
#include "op_handles.h"

namespace maskops {

namespace py = pybind11;

void bind_entries(py::module& m) {
  const auto release = py::call_guard<py::gil_scoped_release>();
  m.def(
      "task_linear",
      [](const Tensor& x, const Tensor& weight, const Tensor& owner, int64_t task,
         const OptTensor& tasks, const OptTensor& order, const OptTensor& offsets,
         const OptTensor& bias, const OptTensor& out_mask, int64_t backend) {
        return ops::task_linear().call(x, weight, owner, task, tasks, order, offsets, bias,
                                       out_mask, backend);
      },
      release);
  m.def(
      "masked_linear",
      [](const Tensor& x, const Tensor& weight, const Tensor& mask, const OptTensor& trainable,
         const OptTensor& bias, const OptTensor& out_mask, int64_t backend) {
        return ops::masked_linear().call(x, weight, mask, trainable, bias, out_mask, backend);
      },
      release);
  m.def(
      "task_conv2d",
      [](const Tensor& x, const Tensor& weight, const Tensor& owner, int64_t task,
         const OptTensor& tasks, const OptTensor& order, const OptTensor& offsets,
         const OptTensor& bias, const OptTensor& out_mask, at::IntArrayRef stride,
         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t backend) {
        return ops::task_conv2d().call(x, weight, owner, task, tasks, order, offsets, bias,
                                       out_mask, stride, padding, dilation,
                                       groups, backend);
      },
      release);
  m.def(
      "masked_conv2d",
      [](const Tensor& x, const Tensor& weight, const Tensor& mask, const OptTensor& trainable,
         const OptTensor& bias, const OptTensor& out_mask, at::IntArrayRef stride,
         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t backend) {
        return ops::masked_conv2d().call(x, weight, mask, trainable, bias, out_mask,
                                         stride, padding, dilation, groups,
                                         backend);
      },
      release);
}

}  // namespace maskops
