// Typed handles of the maskops ops (schemas in ops.cpp), for C++ code that calls them through
// the dispatcher: the autograd kernels and the direct Python entries.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include "args.h"

namespace maskops::ops {

using LinearForward = Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t, const OptTensor&,
                             const OptTensor&, const OptTensor&, const OptTensor&,
                             const OptTensor&, int64_t);
using MaskedLinearForward = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                   const OptTensor&, const OptTensor&, int64_t);
using ConvForward = Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t, const OptTensor&,
                           const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                           at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t, int64_t);
using MaskedConvForward = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                 const OptTensor&, const OptTensor&, at::IntArrayRef,
                                 at::IntArrayRef, at::IntArrayRef, int64_t, int64_t);
using LinearGrad = Tensor(const Tensor&, const Tensor&, int64_t, const OptTensor&, const OptTensor&,
                          int64_t, const OptTensor&, const OptTensor&, const OptTensor&, int64_t);
using ConvGrad = Tensor(const Tensor&, const Tensor&, int64_t, const OptTensor&, const OptTensor&,
                        int64_t, const OptTensor&, const OptTensor&, const OptTensor&,
                        at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                        int64_t, int64_t);

template <class Signature>
c10::TypedOperatorHandle<Signature> find(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Each op looked up once.
inline const auto& task_linear() {
  static const auto op = find<LinearForward>("maskops::task_linear");
  return op;
}
inline const auto& masked_linear() {
  static const auto op = find<MaskedLinearForward>("maskops::masked_linear");
  return op;
}
inline const auto& task_conv2d() {
  static const auto op = find<ConvForward>("maskops::task_conv2d");
  return op;
}
inline const auto& masked_conv2d() {
  static const auto op = find<MaskedConvForward>("maskops::masked_conv2d");
  return op;
}
inline const auto& linear_grad_input() {
  static const auto op = find<LinearGrad>("maskops::linear_grad_input");
  return op;
}
inline const auto& linear_grad_weight() {
  static const auto op = find<LinearGrad>("maskops::linear_grad_weight");
  return op;
}
inline const auto& conv2d_grad_input() {
  static const auto op = find<ConvGrad>("maskops::conv2d_grad_input");
  return op;
}
inline const auto& conv2d_grad_weight() {
  static const auto op = find<ConvGrad>("maskops::conv2d_grad_weight");
  return op;
}

}  // namespace maskops::ops
