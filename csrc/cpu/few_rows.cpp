#include "few_rows.h"

#include <stdexcept>
#include <type_traits>

#include "fused_isa.h"

namespace maskops::cpu {

template <class W>
void few_rows_forward(const accum_t<W>* x, int64_t ldx, int64_t rows_x, const W* w,
                      const Vis<W>& v, int64_t K, const std::vector<KRange>& ranges, unsigned task,
                      int64_t rows_w, accum_t<W>* y, int64_t ldy) {
  MASKOPS_CALL_FUSED(few_rows_forward, x, ldx, rows_x, w, v, K, ranges, task, rows_w, y, ldy)
}

bool dot_forward_takes(const Vis<bf16>& v) {
  return active_isa() == Isa::avx512bf16 && !(v.mode == Mode::mask && v.soft);
}

void dot_forward(const bf16* x, int64_t ldx, int64_t rows_x, const bf16* w, const Vis<bf16>& v,
                 int64_t K, const std::vector<KRange>& ranges, unsigned task, int64_t rows_w,
                 float* y, int64_t ldy) {
  if (!dot_forward_takes(v) || rows_x > kWideRows)
    throw std::invalid_argument("dot_forward: not on the avx512bf16 level, soft masks, or too many rows");
#ifdef MASKOPS_HAVE_X86_KERNELS
  avx512::dot_forward(x, ldx, rows_x, w, v, K, ranges, task, rows_w, y, ldy);
#endif
}

int64_t dot_row_stride(int64_t K) {
  constexpr int64_t line = 64 / int64_t(sizeof(bf16));
  return (K + line - 1) / line * line + line;
}

void narrow_rows(const float* x, int64_t ldx, int64_t rows, int64_t K, bf16* out, int64_t ldo) {
#ifdef MASKOPS_HAVE_X86_KERNELS
  if (active_isa() == Isa::avx512bf16) return avx512::narrow_rows(x, ldx, rows, K, out, ldo);
#endif
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t k = 0; k < K; ++k) out[m * ldo + k] = to_bf16(x[m * ldx + k]);
}

template <class T>
void few_rows_grad_input(const T* g, int64_t ldg, int64_t rows_g, const T* w, const Vis<T>& v,
                         int64_t ldw, unsigned task, int64_t rows_w, int64_t cols, T* gx,
                         int64_t ldgx) {
  MASKOPS_CALL_FUSED(few_rows_grad_input, g, ldg, rows_g, w, v, ldw, task, rows_w, cols, gx, ldgx)
}

#define MASKOPS_INSTANTIATE(T)                                                                \
  template void few_rows_grad_input<T>(const T*, int64_t, int64_t, const T*, const Vis<T>&,   \
                                       int64_t, unsigned, int64_t, int64_t, T*, int64_t);
MASKOPS_INSTANTIATE(float)
MASKOPS_INSTANTIATE(double)
#undef MASKOPS_INSTANTIATE
MASKOPS_INSTANTIATE_FUSED_FORWARD(float)
MASKOPS_INSTANTIATE_FUSED_FORWARD(double)
MASKOPS_INSTANTIATE_FUSED_FORWARD(bf16)
MASKOPS_INSTANTIATE_FUSED_FORWARD(f16)

}  // namespace maskops::cpu
