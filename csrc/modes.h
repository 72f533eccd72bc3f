// Definitions every layer shares: the CPU and CUDA kernels include this header, the binding
// layer (python/) exports its values as maskops._C.modes and maskops._C.limits, and the
// Python code and the Triton kernels read them from there.  Nothing else restates them.
#pragma once

#include <cstdint>

namespace maskops {

// Which weights take part in a product: the `mode` argument of the ops and the kernels.
enum class Mode : int {
  dense = 0,      // every weight
  visible = 1,    // where 0 < owner <= task
  trainable = 2,  // where owner == task
  mask = 3,       // weight * mask: uint8/bool 0/1, or floating (a soft mask)
  bits = 4,       // where bit (k % 32) of word [n, k / 32] of a task's 1-bit visible map is set
};

// Task ids are 1..kMaxTask (owners are uint8; 0 means free or pruned).
constexpr int kMaxTask = 255;
// Entries of a per-task-id table (ids 0..kMaxTask).
constexpr int kTaskIds = kMaxTask + 1;

// Up to this many rows of one task, GPU products stream the weight once (the few-row
// tensor-core kernel with a 1-bit map on CUDA, split-K configs in Triton).  Measured on an
// H100 (bf16, N = K = 4096): the 1-bit map reaches cached-cuBLAS speed at 16 rows, the
// tiled kernels win from about 64.
constexpr int64_t kGpuFewRows = 64;

}  // namespace maskops
