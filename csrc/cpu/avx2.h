// AVX2 + FMA versions of the hottest loops, chosen at run time (x86-64 with GCC or Clang).
// Elsewhere, or on CPUs without AVX2, the portable loops run instead.
#pragma once

#include <cstdint>

#include "few_rows.h"
#include "vis.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MASKOPS_HAVE_AVX2_KERNELS 1
#endif

namespace maskops::cpu {

// Whether the AVX2 kernels run: the CPU has AVX2 and FMA, and they are not switched off.
bool avx2_enabled();
// Switch the AVX2 kernels off or back on (tests use it to cover the portable loops).
void set_avx2_enabled(bool enabled);

#ifdef MASKOPS_HAVE_AVX2_KERNELS
namespace avx2 {

// Same contracts as few_rows_forward, few_rows_grad_input (few_rows.h) and mask_block
// (masking.h).
template <class T>
void few_rows_forward(const T* x, int64_t ldx, int64_t rows_x, const T* w, const Vis<T>& v,
                      int64_t K, const std::vector<KRange>& ranges, unsigned task, int64_t rows_w,
                      T* y, int64_t ldy);
template <class T>
void few_rows_grad_input(const T* g, int64_t ldg, int64_t rows_g, const T* w, const Vis<T>& v,
                         int64_t ldw, unsigned task, int64_t rows_w, int64_t cols, T* gx,
                         int64_t ldgx);
template <class T>
bool mask_block(const T* w, int64_t ldw, const Vis<T>& v, int64_t ldv, unsigned task,
                int64_t rows, int64_t cols, T* out, int64_t ldo);

}  // namespace avx2
#endif

}  // namespace maskops::cpu
