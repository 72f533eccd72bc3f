// Fused kernels for products with only a few rows of activations (M <= kFewRows), where
// the weight is streamed from memory once and masked on load in registers; no scratch.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "vis.h"

namespace maskops::cpu {

constexpr int64_t kFewRows = 4;
// Rows of x a few_rows_forward call takes for bfloat16 weights on the avx512bf16 level, whose
// dot products leave registers for more rows (few_rows_forward_rows).
constexpr int64_t kWideRows = 8;

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

// How many rows of x one few_rows_forward call on W weights takes: kFewRows, or kWideRows.
template <class W>
int64_t few_rows_forward_rows();

// y[m, r] = sum over k in `ranges` of x[m, k] * w_eff[r, k] for m < rows_x
// (<= few_rows_forward_rows<W>()),
// r < rows_w: the ranges (ascending, disjoint) hold every k whose weight counts, usually
// just [0, K).  w and v start at the block's first weight row; weight rows have K elements.
// x and y are in the accumulator type (fp32 for bfloat16 weights).
template <class W>
void few_rows_forward(const accum_t<W>* x, int64_t ldx, int64_t rows_x, const W* w,
                      const Vis<W>& v, int64_t K, const std::vector<KRange>& ranges, unsigned task,
                      int64_t rows_w, accum_t<W>* y, int64_t ldy);

// gx[m, c] += sum_r g[m, r] * w_eff[r, c] for m < rows_g (<= kFewRows), r < rows_w,
// c < cols.  w and v start at the block's first element; weight rows have ldw elements.
template <class T>
void few_rows_grad_input(const T* g, int64_t ldg, int64_t rows_g, const T* w, const Vis<T>& v,
                         int64_t ldw, unsigned task, int64_t rows_w, int64_t cols, T* gx,
                         int64_t ldgx);

}  // namespace maskops::cpu
