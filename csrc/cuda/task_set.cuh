// A set of task ids (0..255) as a 256-bit map in shared memory: which tasks the rows of a
// tile carry, so a block makes one pass per task present instead of one per row.
#pragma once

#include <cstdint>

namespace maskops::cuda {

constexpr int kTaskWords = 8;

__device__ inline void add_task(uint32_t* set, uint32_t task) {
  const uint32_t bit = 1u << (task % 32);
  uint32_t& w = set[(task / 32) % kTaskWords];
  if (!(w & bit)) atomicOr(&w, bit);  // most adds find the bit set: a shared read, no atomic
}

// set = {values[i] : begin <= i < end}; every thread of the block calls this.
template <class V>
__device__ inline void collect_tasks(uint32_t* set, const V* values, int64_t begin, int64_t end) {
  if (threadIdx.x < kTaskWords) set[threadIdx.x] = 0;
  __syncthreads();
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) add_task(set, uint32_t(values[i]));
  __syncthreads();
}

template <class F>
__device__ inline void for_each_task(const uint32_t* set, F&& f) {
  for (int w = 0; w < kTaskWords; ++w) {
    for (uint32_t bits = set[w]; bits; bits &= bits - 1) f(uint32_t(32 * w + __ffs(bits) - 1));
  }
}

}  // namespace maskops::cuda
