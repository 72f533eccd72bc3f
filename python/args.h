// The arguments every maskops op shares, as the kernels see them, and the checks that
// validate them.  The checks run once per call, in the kernel the dispatcher picks first
// (dispatch.cpp on real tensors; maskops/fakes.py calls the same functions through
// maskops._C on fake ones), and work on symbolic shapes.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <string>

#include "csrc/modes.h"

namespace maskops {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Per-sample tasks of a mixed-task batch, as maskops.route builds them once per batch.
struct Routing {
  Tensor task;     // int32 (B,), on x's device
  Tensor order;    // int64 (B,): samples sorted by task (stable), on x's device
  Tensor offsets;  // int64 (kTaskIds + 1,), on the CPU: task t has order[offsets[t]:offsets[t+1]]
  bool defined() const { return task.defined(); }
};

// Which weights an op uses.
struct Selection {
  Mode mode = Mode::dense;
  Tensor owner;      // uint8, weight-shaped: visible / trainable
  Tensor mask;       // bool, uint8 or floating, weight-shaped: mask; int32 1-bit map: bits
  int64_t task = 1;  // when routing is undefined
  Routing routing;   // per-sample tasks (visible / trainable only)

  bool per_task() const { return mode == Mode::visible || mode == Mode::trainable; }
  bool mixed() const { return per_task() && routing.defined(); }

  // The owner and mask dense in `format`: the layout of the weight they select.
  Selection in_format(at::MemoryFormat format) const {
    Selection s = *this;
    if (s.owner.defined()) s.owner = s.owner.contiguous(format);
    if (s.mask.defined()) s.mask = s.mask.contiguous(format);
    return s;
  }
};

struct ConvGeometry {
  std::array<int64_t, 2> stride, padding, dilation;
  int64_t groups;
};

// Whether `t` is 4-D and dense in channels_last but not in (out, in, kh, kw) order (a 1x1
// kernel is both): what model.to(memory_format=torch.channels_last) makes of a conv weight.
inline bool channels_last_only(const Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// "torch.float16" etc., as Python prints dtypes.
std::string dtype_name(at::ScalarType dtype);

Routing routing_of(const OptTensor& task, const OptTensor& order, const OptTensor& offsets);
ConvGeometry geometry_of(at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups);

// ---------------------------------------------------------------- checks of public op calls

void check_task_linear(const Tensor& x, const Tensor& weight, const Tensor& owner, int64_t task,
                       const OptTensor& tasks, const OptTensor& order, const OptTensor& offsets,
                       const OptTensor& bias, const OptTensor& out_mask);
void check_masked_linear(const Tensor& x, const Tensor& weight, const Tensor& mask,
                         const OptTensor& trainable, const OptTensor& bias,
                         const OptTensor& out_mask);
void check_task_conv2d(const Tensor& x, const Tensor& weight, const Tensor& owner, int64_t task,
                       const OptTensor& tasks, const OptTensor& order, const OptTensor& offsets,
                       const OptTensor& bias, const OptTensor& out_mask, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);
void check_masked_conv2d(const Tensor& x, const Tensor& weight, const Tensor& mask,
                         const OptTensor& trainable, const OptTensor& bias,
                         const OptTensor& out_mask, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// The backward ops are called by the autograd kernels with arguments the forward checked;
// this checks what a direct caller could get wrong in a way that would crash a kernel.
void check_selection(int64_t mode, const OptTensor& owner, const OptTensor& mask, int64_t task,
                     const OptTensor& tasks, const OptTensor& order, const OptTensor& offsets,
                     c10::SymIntArrayRef weight_shape, const Tensor& like, int64_t batch);

}  // namespace maskops
