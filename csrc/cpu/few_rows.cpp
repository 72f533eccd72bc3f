#include "few_rows.h"

#include <type_traits>

#include "fused_isa.h"

namespace maskops::cpu {

template <class W>
void few_rows_forward(const accum_t<W>* x, int64_t ldx, int64_t rows_x, const W* w,
                      const Vis<W>& v, int64_t K, const std::vector<KRange>& ranges, unsigned task,
                      int64_t rows_w, accum_t<W>* y, int64_t ldy) {
  MASKOPS_CALL_FUSED(few_rows_forward, x, ldx, rows_x, w, v, K, ranges, task, rows_w, y, ldy)
}

template <class W>
int64_t few_rows_forward_rows() {
  return std::is_same_v<W, bf16> && active_isa() == Isa::avx512bf16 ? kWideRows : kFewRows;
}
template int64_t few_rows_forward_rows<float>();
template int64_t few_rows_forward_rows<double>();
template int64_t few_rows_forward_rows<bf16>();
template int64_t few_rows_forward_rows<f16>();

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
