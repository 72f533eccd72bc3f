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

inline bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace maskops::cpu
