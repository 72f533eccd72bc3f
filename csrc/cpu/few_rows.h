// Fused kernels for products with only a few rows of activations (M <= kFewRows), where
// the weight is streamed from memory once and masked on load in registers; no scratch.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "vis.h"

namespace maskops::cpu {

constexpr int64_t kFewRows = 4;
// Rows of x a dot_forward call takes.
constexpr int64_t kWideRows = 16;

// A range [begin, end) of the K dimension; `full` when every weight in it is selected for
// every row the kernel is given, so the mask need not be read.
struct KRange {
  int64_t begin, end;
  bool full = false;
};

// Calls f(std::integral_constant<int, rows>{}) for rows in 1..N; nothing otherwise.
template <int N, class F>
inline void with_rows_up_to(int64_t rows, F&& f) {
  if constexpr (N > 0) {
    if (rows == N)
      f(std::integral_constant<int, N>{});
    else
      with_rows_up_to<N - 1>(rows, f);
  }
}

// Calls f(RuleConstant<R>{}, std::integral_constant<int, MB>{}) with the rule of `v` and
// MB = rows (1..kFewRows); nothing for 0 rows.
template <class T, class F>
void with_rule_and_rows(const Vis<T>& v, int64_t rows, F&& f) {
  with_rule(v, [&](auto rule) {
    with_rows_up_to<int(kFewRows)>(rows, [&](auto mb) { f(rule, mb); });
  });
}

// y[m, r] = sum over k in `ranges` of x[m, k] * w_eff[r, k] for m < rows_x (<= kFewRows),
// r < rows_w: the ranges (ascending, disjoint) hold every k whose weight counts, usually
// just [0, K).  w and v start at the block's first weight row; weight rows have K elements.
// x and y are in the accumulator type (fp32 for bfloat16 weights).
template <class W>
void few_rows_forward(const accum_t<W>* x, int64_t ldx, int64_t rows_x, const W* w,
                      const Vis<W>& v, int64_t K, const std::vector<KRange>& ranges, unsigned task,
                      int64_t rows_w, accum_t<W>* y, int64_t ldy);

// bfloat16 weights on the avx512bf16 level (isa.h), in every mode but soft masks: AVX-512
// BF16 dot products read x in bfloat16 and read the weights once for all its rows.
bool dot_forward_takes(const Vis<bf16>& v);
// few_rows_forward for bfloat16 x (rows ldx apart, rows_x <= kWideRows) where
// dot_forward_takes(v); sums in fp32.
void dot_forward(const bf16* x, int64_t ldx, int64_t rows_x, const bf16* w, const Vis<bf16>& v,
                 int64_t K, const std::vector<KRange>& ranges, unsigned task, int64_t rows_w,
                 float* y, int64_t ldy);
// The row stride dot_forward runs fastest with for rows of K elements: rows that start in
// different cache sets.
int64_t dot_row_stride(int64_t K);
// x rounded to bfloat16 (exact where the values came from bfloat16), rows ldo apart.
void narrow_rows(const float* x, int64_t ldx, int64_t rows, int64_t K, bf16* out, int64_t ldo);

// gx[m, c] += sum_r g[m, r] * w_eff[r, c] for m < rows_g (<= kFewRows), r < rows_w,
// c < cols.  w and v start at the block's first element; weight rows have ldw elements.
template <class T>
void few_rows_grad_input(const T* g, int64_t ldg, int64_t rows_g, const T* w, const Vis<T>& v,
                         int64_t ldw, unsigned task, int64_t rows_w, int64_t cols, T* gx,
                         int64_t ldgx);

}  // namespace maskops::cpu
