// Tensors derived from an owner map, built once per owner version and task and reused
// while the owner is alive and unchanged (owner_cache.cpp).
#pragma once

#include <ATen/ATen.h>

namespace maskops {

// The 1-bit visible map of `task` (maskops::pack_visible) of an owner map viewed as
// (size(0), the rest) in its memory order: (out, kh, kw, in) for a channels_last conv owner.
at::Tensor cached_visible_bits(const at::Tensor& owner, int64_t task);

// The blocks of a CPU owner map, viewed as (N = size(0), K = the rest) in logical order
// whatever its layout, holding a weight
// visible to `task` (csrc/cpu/blocks.h): uint8 (ceil(N / 32), ceil(K / 64)).
at::Tensor cached_visible_blocks(const at::Tensor& owner, int64_t task);

// The packing itself: int32 (N, ceil(K / 32)), bit j of word [n, w] set where
// 0 < owner[n, 32 w + j] <= task.
at::Tensor pack_visible(const at::Tensor& owner, int64_t task);

}  // namespace maskops
