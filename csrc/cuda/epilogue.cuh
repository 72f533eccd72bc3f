// What happens to an output element after its sum: bias, output-channel mask, rounding and
// the store; or, for split-K, an fp32 partial sum that `splitk_finish` adds up later.
#pragma once

#include <cstdint>

#include "masked_chunk.cuh"

namespace maskops::cuda {

template <class T>
struct Epilogue {
  int64_t M = 0, N = 0;            // y (M, N), row-major
  T* y = nullptr;
  const T* bias = nullptr;         // (N) or null
  const T* out_mask = nullptr;     // (N), or (M, N) when out_mask_per_row; or null
  bool out_mask_per_row = false;
  float* partial = nullptr;        // split-K: (splits, M, N) fp32, written instead of y

  __device__ float finish(int64_t m, int64_t n, float v) const {
    if (bias) v += widen(bias[n]);
    if (out_mask) {  // a 0 gives exactly 0: a switched-off unit stays off even for NaN / inf
      const float om = widen(out_mask[out_mask_per_row ? m * N + n : n]);
      v = om == 0.f ? 0.f : v * om;
    }
    return v;
  }

  // Stores (m, n) and (m, n + 1) of split `split`; columns past N are dropped.
  __device__ void store_pair(int split, int64_t m, int64_t n, float v0, float v1) const {
    if (m >= M || n >= N) return;
    const bool both = n + 1 < N;
    if (partial) {
      float* p = partial + (split * M + m) * N + n;
      p[0] = v0;
      if (both) p[1] = v1;
      return;
    }
    T* p = y + m * N + n;
    const T a = narrow<T>(finish(m, n, v0));
    if (both && (N % 2 == 0)) {  // (m * N + n) is even: one 4-byte store
      typename Pair<T>::type pair;
      pair.x = a;
      pair.y = narrow<T>(finish(m, n + 1, v1));
      *reinterpret_cast<typename Pair<T>::type*>(p) = pair;
      return;
    }
    p[0] = a;
    if (both) p[1] = narrow<T>(finish(m, n + 1, v1));
  }
};

// y = finish(sum over splits of the partial sums).  One thread per element.
template <class T>
__global__ void splitk_finish(Epilogue<T> e, int splits) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= e.M * e.N) return;
  float v = 0.f;
  for (int s = 0; s < splits; ++s) v += e.partial[s * e.M * e.N + i];
  e.y[i] = narrow<T>(e.finish(i / e.N, i % e.N, v));
}

}  // namespace maskops::cuda
