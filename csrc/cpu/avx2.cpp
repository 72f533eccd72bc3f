#include "avx2.h"

#include "few_rows.h"

#ifdef MASKOPS_HAVE_AVX2_KERNELS
#include <immintrin.h>
#endif

#include <atomic>

namespace maskops::cpu {

namespace {

bool cpu_has_avx2() {
#ifdef MASKOPS_HAVE_AVX2_KERNELS
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

std::atomic<bool> avx2_switch{cpu_has_avx2()};

}  // namespace

bool avx2_enabled() { return avx2_switch.load(std::memory_order_relaxed); }

void set_avx2_enabled(bool enabled) { avx2_switch = enabled && cpu_has_avx2(); }

#ifdef MASKOPS_HAVE_AVX2_KERNELS
namespace avx2 {

#define MASKOPS_AVX2 __attribute__((target("avx2,fma"), always_inline)) inline

namespace {

// Elements per step: 16 selection bytes fill one SSE register.
constexpr int kStep = 16;

// The task operand of keep_bytes: task - 1 for visible, task for trainable.
template <Rule R>
MASKOPS_AVX2 __m128i task_operand(unsigned task) {
  return _mm_set1_epi8(char(R == Rule::visible ? task - 1 : task));
}

// 0xFF where element i + j (j < 16) is selected, else 0x00 (binary rules).
template <Rule R, class T>
MASKOPS_AVX2 __m128i keep_bytes(const Vis<T>& v, int64_t i, __m128i operand) {
  if constexpr (R == Rule::visible) {  // 0 < o <= t  <=>  o - 1 <= t - 1, unsigned bytes
    const __m128i o = _mm_loadu_si128(reinterpret_cast<const __m128i*>(v.owner + i));
    const __m128i d = _mm_sub_epi8(o, _mm_set1_epi8(1));
    return _mm_cmpeq_epi8(_mm_min_epu8(d, operand), d);
  } else if constexpr (R == Rule::trainable) {
    const __m128i o = _mm_loadu_si128(reinterpret_cast<const __m128i*>(v.owner + i));
    return _mm_cmpeq_epi8(o, operand);
  } else {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(v.binary + i));
    return _mm_xor_si128(_mm_cmpeq_epi8(b, _mm_setzero_si128()), _mm_set1_epi8(char(0xFF)));
  }
}

// Vector types per element type: 16 elements are 2 float vectors or 4 double vectors.
template <class T>
struct Simd;

template <>
struct Simd<float> {
  using V = __m256;
  static constexpr int kVectors = 2, kLanes = 8;
  struct Block {  // 16 elements (not std::array, which would drop V's attributes)
    V v[kVectors];
  };
  static MASKOPS_AVX2 V load(const float* p) { return _mm256_loadu_ps(p); }
  static MASKOPS_AVX2 void store(float* p, V a) { _mm256_storeu_ps(p, a); }
  static MASKOPS_AVX2 V zero() { return _mm256_setzero_ps(); }
  static MASKOPS_AVX2 V broadcast(float a) { return _mm256_set1_ps(a); }
  static MASKOPS_AVX2 V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static MASKOPS_AVX2 V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static MASKOPS_AVX2 V add(V a, V b) { return _mm256_add_ps(a, b); }
  static MASKOPS_AVX2 Block masks(__m128i keep) {
    return {{_mm256_castsi256_ps(_mm256_cvtepi8_epi32(keep)),
             _mm256_castsi256_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(keep, keep)))}};
  }
  static MASKOPS_AVX2 V and_(V mask, V a) { return _mm256_and_ps(mask, a); }
  static MASKOPS_AVX2 float sum(V a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

template <>
struct Simd<double> {
  using V = __m256d;
  static constexpr int kVectors = 4, kLanes = 4;
  struct Block {
    V v[kVectors];
  };
  static MASKOPS_AVX2 V load(const double* p) { return _mm256_loadu_pd(p); }
  static MASKOPS_AVX2 void store(double* p, V a) { _mm256_storeu_pd(p, a); }
  static MASKOPS_AVX2 V zero() { return _mm256_setzero_pd(); }
  static MASKOPS_AVX2 V broadcast(double a) { return _mm256_set1_pd(a); }
  static MASKOPS_AVX2 V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static MASKOPS_AVX2 V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static MASKOPS_AVX2 V add(V a, V b) { return _mm256_add_pd(a, b); }
  static MASKOPS_AVX2 Block masks(__m128i keep) {
    return {{_mm256_castsi256_pd(_mm256_cvtepi8_epi64(keep)),
             _mm256_castsi256_pd(_mm256_cvtepi8_epi64(_mm_srli_si128(keep, 4))),
             _mm256_castsi256_pd(_mm256_cvtepi8_epi64(_mm_srli_si128(keep, 8))),
             _mm256_castsi256_pd(_mm256_cvtepi8_epi64(_mm_srli_si128(keep, 12)))}};
  }
  static MASKOPS_AVX2 V and_(V mask, V a) { return _mm256_and_pd(mask, a); }
  static MASKOPS_AVX2 double sum(V a) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
};

// Effective weights of elements i .. i+16 (w and v at the same block), masked on load.
// `keep` receives the selection bytes (all ones for dense and soft rules).
template <Rule R, class T>
MASKOPS_AVX2 typename Simd<T>::Block effective16(
    const T* w, const Vis<T>& v, int64_t i, __m128i operand, __m128i& keep) {
  using S = Simd<T>;
  typename S::Block e;
  if constexpr (R == Rule::dense || R == Rule::soft) {
    keep = _mm_set1_epi8(char(0xFF));
    for (int j = 0; j < S::kVectors; ++j) {
      e.v[j] = S::load(w + i + j * S::kLanes);
      if constexpr (R == Rule::soft) e.v[j] = S::mul(e.v[j], S::load(v.soft + i + j * S::kLanes));
    }
  } else {
    keep = keep_bytes<R>(v, i, operand);
    const auto masks = S::masks(keep);
    for (int j = 0; j < S::kVectors; ++j)
      e.v[j] = S::and_(masks.v[j], S::load(w + i + j * S::kLanes));
  }
  return e;
}

// acc[m][i] (+ tail[m][i] for the elements past the last whole step) += x[m, range] .
// w_eff[r + i, range] for MB rows of x and RB weight rows: RB weight rows advance together,
// because several concurrent streams draw more memory bandwidth than one.
template <Rule R, int MB, int RB, class T>
MASKOPS_AVX2 void forward_range(const T* x, int64_t ldx, const T* w, const Vis<T>& v, int64_t K,
                                const KRange& range, unsigned task, __m128i operand, int64_t r,
                                typename Simd<T>::V (&acc)[MB][RB], T (&tail)[MB][RB]) {
  using S = Simd<T>;
  int64_t k = range.begin;
  for (; k + kStep <= range.end; k += kStep) {
    for (int i = 0; i < RB; ++i) {
      __m128i keep;
      const auto e = effective16<R>(w + (r + i) * K, v.at((r + i) * K), k, operand, keep);
      for (int m = 0; m < MB; ++m)
        for (int j = 0; j < S::kVectors; ++j)
          acc[m][i] = S::fma(S::load(x + m * ldx + k + j * S::kLanes), e.v[j], acc[m][i]);
    }
  }
  for (int i = 0; i < RB; ++i) {
    const T* wr = w + (r + i) * K;
    const Vis<T> vr = v.at((r + i) * K);
    for (int64_t t = k; t < range.end; ++t) {
      const T e = effective<R>(vr, t, wr[t], task);
      for (int m = 0; m < MB; ++m) tail[m][i] += x[m * ldx + t] * e;
    }
  }
}

constexpr size_t kPrefetchAhead = 2;

// y[m, r .. r+RB) for MB rows of x over the K ranges; full ranges read no mask.
template <Rule R, int MB, int RB, class T>
MASKOPS_AVX2 void forward_rows(const T* x, int64_t ldx, const T* w, const Vis<T>& v, int64_t K,
                               const std::vector<KRange>& ranges, unsigned task,
                               __m128i operand, int64_t r, T* y, int64_t ldy) {
  using S = Simd<T>;
  typename S::V acc[MB][RB];
  T tail[MB][RB] = {};
  for (int m = 0; m < MB; ++m)
    for (int i = 0; i < RB; ++i) acc[m][i] = S::zero();
  for (size_t j = 0; j < ranges.size(); ++j) {
    const KRange& range = ranges[j];
    // Runs of visible blocks are scattered: ask for one a few runs ahead while this one is
    // computed, or each run waits for memory on its own.
    if (j + kPrefetchAhead < ranges.size()) {
      const KRange& ahead = ranges[j + kPrefetchAhead];
      for (int i = 0; i < RB; ++i)
        for (int64_t k = ahead.begin; k < ahead.end; k += 64 / int64_t(sizeof(T)))
          _mm_prefetch(reinterpret_cast<const char*>(w + (r + i) * K + k), _MM_HINT_T0);
    }
    if (range.full)
      forward_range<Rule::dense, MB, RB>(x, ldx, w, v, K, range, task, operand, r, acc, tail);
    else
      forward_range<R, MB, RB>(x, ldx, w, v, K, range, task, operand, r, acc, tail);
  }
  for (int i = 0; i < RB; ++i)
    for (int m = 0; m < MB; ++m) y[m * ldy + r + i] = S::sum(acc[m][i]) + tail[m][i];
}

template <Rule R, int MB, class T>
__attribute__((target("avx2,fma"))) void forward_kernel(const T* x, int64_t ldx, const T* w,
                                                        const Vis<T>& v, int64_t K,
                                                        const std::vector<KRange>& ranges,
                                                        unsigned task, int64_t rows_w, T* y,
                                                        int64_t ldy) {
  // MB * RB accumulators fit the 16 registers; one row of x streams 8 weight rows at once
  // (measured: 8 rows ran block-sparse weights 10-20% faster than 4, dense ones alike).
  constexpr int RB = MB == 1 ? 8 : MB == 2 ? 4 : 2;
  const __m128i operand = task_operand<R>(task);
  int64_t r = 0;
  for (; r + RB <= rows_w; r += RB)
    forward_rows<R, MB, RB>(x, ldx, w, v, K, ranges, task, operand, r, y, ldy);
  for (; r < rows_w; ++r) forward_rows<R, MB, 1>(x, ldx, w, v, K, ranges, task, operand, r, y, ldy);
}

// gx[m, c] += sum_{i < RB} g[m, r + i] * w_eff[r + i, c]: RB weight rows per pass, so each
// gx element is loaded and stored once per RB rows.
template <Rule R, int MB, int RB, class T>
MASKOPS_AVX2 void grad_input_rows(const T* g, int64_t ldg, const T* w, const Vis<T>& v,
                                  int64_t ldw, unsigned task, __m128i operand, int64_t r,
                                  int64_t cols, T* gx, int64_t ldgx) {
  using S = Simd<T>;
  typename S::V gm[MB][RB];
  for (int m = 0; m < MB; ++m)
    for (int i = 0; i < RB; ++i) gm[m][i] = S::broadcast(g[m * ldg + r + i]);
  int64_t c = 0;
  for (; c + kStep <= cols; c += kStep) {
    typename S::Block e[RB];
    for (int i = 0; i < RB; ++i) {
      __m128i keep;
      e[i] = effective16<R>(w + (r + i) * ldw, v.at((r + i) * ldw), c, operand, keep);
    }
    for (int m = 0; m < MB; ++m)
      for (int j = 0; j < S::kVectors; ++j) {
        T* out = gx + m * ldgx + c + j * S::kLanes;
        typename S::V acc = S::load(out);
        for (int i = 0; i < RB; ++i) acc = S::fma(gm[m][i], e[i].v[j], acc);
        S::store(out, acc);
      }
  }
  for (int i = 0; i < RB; ++i) {
    const T* wr = w + (r + i) * ldw;
    const Vis<T> vr = v.at((r + i) * ldw);
    for (int64_t t = c; t < cols; ++t) {
      const T e = effective<R>(vr, t, wr[t], task);
      for (int m = 0; m < MB; ++m) gx[m * ldgx + t] += g[m * ldg + r + i] * e;
    }
  }
}

template <Rule R, int MB, class T>
__attribute__((target("avx2,fma"))) void grad_input_kernel(const T* g, int64_t ldg, const T* w,
                                                           const Vis<T>& v, int64_t ldw,
                                                           unsigned task, int64_t rows_w,
                                                           int64_t cols, T* gx, int64_t ldgx) {
  constexpr int RB = 8 / Simd<T>::kVectors;  // RB * kVectors effective vectors in registers
  const __m128i operand = task_operand<R>(task);
  int64_t r = 0;
  for (; r + RB <= rows_w; r += RB)
    grad_input_rows<R, MB, RB>(g, ldg, w, v, ldw, task, operand, r, cols, gx, ldgx);
  for (; r < rows_w; ++r)
    grad_input_rows<R, MB, 1>(g, ldg, w, v, ldw, task, operand, r, cols, gx, ldgx);
}

template <Rule R, class T>
__attribute__((target("avx2,fma"))) bool mask_kernel(const T* w, int64_t ldw, const Vis<T>& v,
                                                     int64_t ldv, unsigned task, int64_t rows,
                                                     int64_t cols, T* out, int64_t ldo) {
  using S = Simd<T>;
  const __m128i operand = task_operand<R>(task);
  __m128i any = _mm_setzero_si128();
  bool any_tail = false;
  for (int64_t r = 0; r < rows; ++r) {
    const T* wr = w + r * ldw;
    const Vis<T> vr = v.at(r * ldv);
    T* o = out + r * ldo;
    int64_t c = 0;
    for (; c + kStep <= cols; c += kStep) {
      __m128i keep;
      const auto e = effective16<R>(wr, vr, c, operand, keep);
      for (int j = 0; j < S::kVectors; ++j) S::store(o + c + j * S::kLanes, e.v[j]);
      any = _mm_or_si128(any, keep);
    }
    for (; c < cols; ++c) {
      o[c] = effective<R>(vr, c, wr[c], task);
      any_tail |= effective<R>(vr, c, T(1), task) != T(0);
    }
  }
  return any_tail || !_mm_testz_si128(any, any);
}

}  // namespace

template <class T>
void few_rows_forward(const T* x, int64_t ldx, int64_t rows_x, const T* w, const Vis<T>& v,
                      int64_t K, const std::vector<KRange>& ranges, unsigned task, int64_t rows_w,
                      T* y, int64_t ldy) {
  with_rule_and_rows(v, rows_x, [&](auto rule, auto rows) {
    forward_kernel<decltype(rule)::value, decltype(rows)::value>(x, ldx, w, v, K, ranges, task,
                                                                 rows_w, y, ldy);
  });
}

template <class T>
void few_rows_grad_input(const T* g, int64_t ldg, int64_t rows_g, const T* w, const Vis<T>& v,
                         int64_t ldw, unsigned task, int64_t rows_w, int64_t cols, T* gx,
                         int64_t ldgx) {
  with_rule_and_rows(v, rows_g, [&](auto rule, auto rows) {
    grad_input_kernel<decltype(rule)::value, decltype(rows)::value>(g, ldg, w, v, ldw, task,
                                                                    rows_w, cols, gx, ldgx);
  });
}

template <class T>
bool mask_block(const T* w, int64_t ldw, const Vis<T>& v, int64_t ldv, unsigned task,
                int64_t rows, int64_t cols, T* out, int64_t ldo) {
  return with_rule(v, [&](auto rule) {
    constexpr Rule R = decltype(rule)::value;
    return mask_kernel<R>(w, ldw, v, ldv, task, rows, cols, out, ldo);
  });
}

#define MASKOPS_INSTANTIATE(T)                                                                \
  template void few_rows_forward<T>(const T*, int64_t, int64_t, const T*, const Vis<T>&,      \
                                    int64_t, const std::vector<KRange>&, unsigned, int64_t, T*, \
                                    int64_t);                                                 \
  template void few_rows_grad_input<T>(const T*, int64_t, int64_t, const T*, const Vis<T>&,   \
                                       int64_t, unsigned, int64_t, int64_t, T*, int64_t);         \
  template bool mask_block<T>(const T*, int64_t, const Vis<T>&, int64_t, unsigned, int64_t,   \
                              int64_t, T*, int64_t);
MASKOPS_INSTANTIATE(float)
MASKOPS_INSTANTIATE(double)
#undef MASKOPS_INSTANTIATE

}  // namespace avx2
#endif

}  // namespace maskops::cpu
