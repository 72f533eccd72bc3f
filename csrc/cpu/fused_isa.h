// The fused loops (fused.h) of each instruction set (isa.h): few_rows_forward (also for
// 16-bit weights) and few_rows_grad_input with the contracts of few_rows.h, mask_block with
// that of masking.h.
// few_rows.cpp and masking.cpp call the copy of the active instruction set.
#pragma once

#include <cstdint>
#include <vector>

#include "few_rows.h"
#include "isa.h"
#include "vis.h"

#define MASKOPS_DECLARE_FUSED(ns)                                                               \
  namespace maskops::cpu::ns {                                                                  \
  template <class W>                                                                            \
  void few_rows_forward(const accum_t<W>* x, int64_t ldx, int64_t rows_x, const W* w,           \
                        const Vis<W>& v, int64_t K, const std::vector<KRange>& ranges,          \
                        unsigned task, int64_t rows_w, accum_t<W>* y, int64_t ldy);             \
  template <class T>                                                                            \
  void few_rows_grad_input(const T* g, int64_t ldg, int64_t rows_g, const T* w,                 \
                           const Vis<T>& v, int64_t ldw, unsigned task, int64_t rows_w,         \
                           int64_t cols, T* gx, int64_t ldgx);                                  \
  template <class T>                                                                            \
  bool mask_block(const T* w, int64_t ldw, const Vis<T>& v, int64_t ldv, unsigned task,         \
                  int64_t rows, int64_t cols, T* out, int64_t ldo);                             \
  }

#define MASKOPS_INSTANTIATE_FUSED_FORWARD(W)                                                  \
  template void few_rows_forward<W>(const accum_t<W>*, int64_t, int64_t, const W*,            \
                                    const Vis<W>&, int64_t, const std::vector<KRange>&,       \
                                    unsigned, int64_t, accum_t<W>*, int64_t);

#define MASKOPS_INSTANTIATE_FUSED_16BIT(W)                                                    \
  MASKOPS_INSTANTIATE_FUSED_FORWARD(W)                                                        \
  template bool mask_block<W>(const W*, int64_t, const Vis<W>&, int64_t, unsigned, int64_t,   \
                              int64_t, W*, int64_t);

#define MASKOPS_INSTANTIATE_FUSED(T)                                                          \
  MASKOPS_INSTANTIATE_FUSED_FORWARD(T)                                                        \
  template void few_rows_grad_input<T>(const T*, int64_t, int64_t, const T*, const Vis<T>&,   \
                                       int64_t, unsigned, int64_t, int64_t, T*, int64_t);     \
  template bool mask_block<T>(const T*, int64_t, const Vis<T>&, int64_t, unsigned, int64_t,   \
                              int64_t, T*, int64_t);

MASKOPS_DECLARE_FUSED(generic)
#ifdef MASKOPS_HAVE_X86_KERNELS
MASKOPS_DECLARE_FUSED(avx2)
MASKOPS_DECLARE_FUSED(avx512)
// The avx512bf16 level's bfloat16 dot products (few_rows.h), in the avx512 copy.
namespace maskops::cpu::avx512 {
void dot_forward(const bf16* x, int64_t ldx, int64_t rows_x, const bf16* w, const Vis<bf16>& v,
                 int64_t K, const std::vector<KRange>& ranges, unsigned task, int64_t rows_w,
                 float* y, int64_t ldy);
void narrow_rows(const float* x, int64_t ldx, int64_t rows, int64_t K, bf16* out, int64_t ldo);
}  // namespace maskops::cpu::avx512
#endif

// `return ns::fn(args)` with ns the active instruction set's namespace.
#ifdef MASKOPS_HAVE_X86_KERNELS
#define MASKOPS_CALL_FUSED(fn, ...)                                   \
  switch (::maskops::cpu::active_isa()) {                             \
    case ::maskops::cpu::Isa::avx512bf16:                             \
    case ::maskops::cpu::Isa::avx512: return avx512::fn(__VA_ARGS__); \
    case ::maskops::cpu::Isa::avx2: return avx2::fn(__VA_ARGS__);     \
    default: return generic::fn(__VA_ARGS__);                         \
  }
#else
#define MASKOPS_CALL_FUSED(fn, ...) return generic::fn(__VA_ARGS__);
#endif
