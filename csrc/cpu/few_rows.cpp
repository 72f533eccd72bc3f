#include "few_rows.h"

#include "avx2.h"

namespace maskops::cpu {

namespace {

template <Rule R, int MB, class T>
void forward_kernel(const T* x, int64_t ldx, const T* w, const Vis<T>& v, int64_t K,
                    const std::vector<KRange>& ranges, unsigned task, int64_t rows_w, T* y,
                    int64_t ldy) {
  static_assert(MB >= 1 && MB <= 4, "one to four rows");
  const T* x0 = x;
  const T* x1 = x + (MB > 1 ? ldx : 0);
  const T* x2 = x + (MB > 2 ? 2 * ldx : 0);
  const T* x3 = x + (MB > 3 ? 3 * ldx : 0);
  for (int64_t r = 0; r < rows_w; ++r) {
    const T* wr = w + r * K;
    const Vis<T> vr = v.at(r * K);
    // Scalar sums (not an array) and `omp simd`: the compiler may reassociate them into
    // vector lanes.
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    auto add = [&](auto rule, const KRange& range) {
      constexpr Rule RR = decltype(rule)::value;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int64_t k = range.begin; k < range.end; ++k) {
        const T e = effective<RR>(vr, k, wr[k], task);
        s0 += x0[k] * e;
        if constexpr (MB > 1) s1 += x1[k] * e;
        if constexpr (MB > 2) s2 += x2[k] * e;
        if constexpr (MB > 3) s3 += x3[k] * e;
      }
    };
    for (const KRange& range : ranges) {
      if (range.full)
        add(RuleConstant<Rule::dense>{}, range);
      else
        add(RuleConstant<R>{}, range);
    }
    const T sums[4] = {s0, s1, s2, s3};
    for (int m = 0; m < MB; ++m) y[m * ldy + r] = sums[m];
  }
}

// Four weight rows per pass, so each gx element is loaded and stored once per four rows.
template <Rule R, int MB, class T>
void grad_input_kernel(const T* g, int64_t ldg, const T* w, const Vis<T>& v, int64_t ldw,
                       unsigned task, int64_t rows_w, int64_t cols, T* gx, int64_t ldgx) {
  constexpr int RB = 4;
  int64_t r = 0;
  for (; r + RB <= rows_w; r += RB) {
    T gm[MB][RB];
    for (int m = 0; m < MB; ++m)
      for (int i = 0; i < RB; ++i) gm[m][i] = g[m * ldg + r + i];
    const T* w0 = w + r * ldw;
    const Vis<T> v0 = v.at(r * ldw);
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      T e[RB];
      for (int i = 0; i < RB; ++i) e[i] = effective<R>(v0, i * ldw + c, w0[i * ldw + c], task);
      for (int m = 0; m < MB; ++m) {
        T s = gx[m * ldgx + c];
        for (int i = 0; i < RB; ++i) s += gm[m][i] * e[i];
        gx[m * ldgx + c] = s;
      }
    }
  }
  for (; r < rows_w; ++r) {
    const T* wr = w + r * ldw;
    const Vis<T> vr = v.at(r * ldw);
    for (int m = 0; m < MB; ++m) {
      const T gmr = g[m * ldg + r];
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) gx[m * ldgx + c] += gmr * effective<R>(vr, c, wr[c], task);
    }
  }
}

}  // namespace

template <class T>
void few_rows_forward(const T* x, int64_t ldx, int64_t rows_x, const T* w, const Vis<T>& v,
                      int64_t K, const std::vector<KRange>& ranges, unsigned task, int64_t rows_w,
                      T* y, int64_t ldy) {
#ifdef MASKOPS_HAVE_AVX2_KERNELS
  if (avx2_enabled())
    return avx2::few_rows_forward(x, ldx, rows_x, w, v, K, ranges, task, rows_w, y, ldy);
#endif
  with_rule_and_rows(v, rows_x, [&](auto rule, auto rows) {
    forward_kernel<decltype(rule)::value, decltype(rows)::value>(x, ldx, w, v, K, ranges, task,
                                                                 rows_w, y, ldy);
  });
}

template <class T>
void few_rows_grad_input(const T* g, int64_t ldg, int64_t rows_g, const T* w, const Vis<T>& v,
                         int64_t ldw, unsigned task, int64_t rows_w, int64_t cols, T* gx,
                         int64_t ldgx) {
#ifdef MASKOPS_HAVE_AVX2_KERNELS
  if (avx2_enabled())
    return avx2::few_rows_grad_input(g, ldg, rows_g, w, v, ldw, task, rows_w, cols, gx, ldgx);
#endif
  with_rule_and_rows(v, rows_g, [&](auto rule, auto rows) {
    grad_input_kernel<decltype(rule)::value, decltype(rows)::value>(g, ldg, w, v, ldw, task,
                                                                    rows_w, cols, gx, ldgx);
  });
}

#define MASKOPS_INSTANTIATE(T)                                                                \
  template void few_rows_forward<T>(const T*, int64_t, int64_t, const T*, const Vis<T>&,      \
                                    int64_t, const std::vector<KRange>&, unsigned, int64_t, T*, \
                                    int64_t);                                                 \
  template void few_rows_grad_input<T>(const T*, int64_t, int64_t, const T*, const Vis<T>&,   \
                                       int64_t, unsigned, int64_t, int64_t, T*, int64_t);
MASKOPS_INSTANTIATE(float)
MASKOPS_INSTANTIATE(double)
#undef MASKOPS_INSTANTIATE

}  // namespace maskops::cpu
