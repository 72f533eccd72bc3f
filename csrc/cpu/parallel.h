// The OpenMP runtime, or one thread when built without OpenMP.
#pragma once

#include <cstdint>

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

// How a parallel loop hands out its indices: in equal contiguous shares, or one at a time to
// whichever thread is free (items of uneven work).
enum class Schedule { even, dynamic };

// body(i) for i in [0, n) on `threads` threads; on the calling thread alone, outside any OpenMP
// region, when threads (or n) is 1.  A region of one thread is not free: libgomp's idle workers
// are slower to join the next region, torch's and MKL's included (measured, AMD EPYC, 2
// threads: a masked Linear(8, 8) at batch 1 took 2.4 us instead of 1.8 us, and an F.linear
// of 197 x 192 by 576 x 192 right after it 4-10 us longer).
template <class F>
void parallel_for(int64_t n, int threads, Schedule schedule, F&& body) {
  if (threads <= 1 || n <= 1) {
    for (int64_t i = 0; i < n; ++i) body(i);
  } else if (schedule == Schedule::dynamic) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) body(i);
  } else {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) body(i);
  }
}

// Threads for a memory-bound loop over `elements`: one below `minimum`, else all.
inline int threads_above(int64_t elements, int64_t minimum) {
  return elements > minimum ? max_threads() : 1;
}

inline bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace maskops::cpu
