// maskops.route (routing.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace maskops {

// (task int32, order int64, offsets int64 on the CPU) for per-sample task ids: task and order
// on `device` (default: task's), see Routing in args.h.  Raises for ids outside 1..255.
std::tuple<at::Tensor, at::Tensor, at::Tensor> route(const at::Tensor& task,
                                                     std::optional<at::Device> device);

}  // namespace maskops
