// The OpenMP runtime, or one thread when built without OpenMP.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

namespace maskops::cpu {

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// The calling thread's number in the current parallel region (0 outside one).
inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Multiply-adds below which a product runs on the calling thread: waking a second thread costs
// more than it saves.  Measured (AMD EPYC, 2 threads, fp32 linear, median of interleaved runs):
// at 64 x 64 (4k MACs) one thread was 2.3x faster than two; the two break even between
// 64k and 256k MACs (1 x 256 x 256 on two threads: 1.3x slower than the dense op; 1 x 512 x 512:
// 0.88x, faster).
constexpr int64_t kMinParallelWork = int64_t(1) << 17;

// Threads for a product of `work` multiply-adds.
inline int threads_for(int64_t work) { return work < kMinParallelWork ? 1 : max_threads(); }

inline bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace maskops::cpu
