// The fused loops of few_rows.h and mask_block (masking.h), written once over a SIMD
// abstraction and compiled once per instruction set: a fused_<isa>.cpp file includes its
// simd_<isa>.h (which defines MASKOPS_ISA's vectors and the MASKOPS_TARGET/MASKOPS_INLINE
// attributes), then this file.  Everything lands in namespace maskops::cpu::<isa>, so the
// copies never meet at link time.
//
// The weight is read in steps of 16 elements: one selection (`Keep`) per step, built from 16
// owner or mask bytes or 16 bits of a 1-bit map, masks the step's weights on load.
#pragma once

#include <algorithm>
#include <vector>

#include "fused_isa.h"
#include "scratch.h"

namespace maskops::cpu::MASKOPS_ISA {

namespace {

constexpr int kStep = 16;

// Masked rows ask for their weights 1 KB ahead: the hardware alone fed them more slowly than
// unmasked rows (measured, AMD EPYC with AVX-512, M = 1, N = K = 4096, 1 thread, median of 25
// interleaved runs: 1-bit maps 3.4 -> 3.0 ms, unmasked rows 2.2 ms).
constexpr int64_t kPrefetchBytes = 1024;
// Masked copies ask for their weights 2 KB ahead (measured, AMD EPYC with AVX-512, 2 threads,
// fp32 with 1-bit maps, ten 9.4 MB weights in turn, so each comes from memory: 5.3 ms without,
// 2.7 / 2.4 / 2.4 ms at 1 / 2 / 4 KB; memcpy of the same bytes 2.2-2.4 ms).
constexpr int64_t kMaskPrefetchBytes = 2048;

// Loops over the registers of one step, unrolled completely.
#define MASKOPS_UNROLL _Pragma("GCC unroll 16")

// The byte the owner is compared with: task - 1 for visible (0 < o <= t <=> o - 1 <= t - 1
// as unsigned bytes), task for trainable.
template <Rule R>
MASKOPS_INLINE Operand operand_of(unsigned task) {
  return broadcast_byte(uint8_t(R == Rule::visible ? task - 1 : task));
}

template <Rule R, class T>
MASKOPS_INLINE Keep keep(const Vis<T>& v, int64_t i, Operand operand) {
  if constexpr (R == Rule::visible) return keep_at_most(v.owner + i, operand);
  else if constexpr (R == Rule::trainable) return keep_equal(v.owner + i, operand);
  else if constexpr (R == Rule::binary) return keep_nonzero(v.binary + i);
  else if constexpr (R == Rule::bits) return keep_bits(bits16(v, i));
  else return keep_all();
}

// Effective weights of elements i .. i+16 (w and v at the same block), masked on load and
// widened to the accumulator type.  `selected` receives the selection (all for dense and soft).
template <Rule R, class W>
MASKOPS_INLINE typename Simd<accum_t<W>>::Block effective16(const W* w, const Vis<W>& v, int64_t i,
                                                            Operand operand, Keep& selected) {
  using S = Simd<accum_t<W>>;
  selected = keep<R>(v, i, operand);
  if constexpr (R == Rule::dense || R == Rule::soft) {
    typename S::Block e;
    for (int j = 0; j < S::kVectors; ++j) {
      e.v[j] = S::load(w + i + j * S::kLanes);
      if constexpr (R == Rule::soft) e.v[j] = S::mul(e.v[j], S::load(v.soft + i + j * S::kLanes));
    }
    return e;
  } else {
    return S::select(selected, w + i);
  }
}

// acc[m][i] (+ tail[m][i] for the elements past the last whole step) += x[m, range] .
// w_eff[r + i, range] for MB rows of x and RB weight rows: RB weight rows advance together,
// because several concurrent streams draw more memory bandwidth than one.
template <Rule R, int MB, int RB, class W, class T = accum_t<W>>
MASKOPS_INLINE void forward_range(const T* x, int64_t ldx, const W* w, const Vis<W>& v, int64_t K,
                                  const KRange& range, unsigned task, Operand operand, int64_t r,
                                  typename Simd<T>::V (&acc)[MB][RB], T (&tail)[MB][RB]) {
  using S = Simd<T>;
  // Row pointers and selections worked out once per row, not once per step.
  const W* wr[RB];
  Vis<W> vr[RB];
  typename S::V sums[MB][RB];
  for (int i = 0; i < RB; ++i) {
    wr[i] = w + (r + i) * K;
    vr[i] = v.at((r + i) * K);
    for (int m = 0; m < MB; ++m) sums[m][i] = acc[m][i];
  }
  int64_t k = range.begin;
  for (; k + kStep <= range.end; k += kStep) {
    MASKOPS_UNROLL for (int i = 0; i < RB; ++i) {
      if constexpr (R != Rule::dense) __builtin_prefetch(reinterpret_cast<const char*>(wr[i] + k) + kPrefetchBytes, 0, 3);
      Keep selected;
      const auto e = effective16<R>(wr[i], vr[i], k, operand, selected);
      MASKOPS_UNROLL for (int m = 0; m < MB; ++m)
        MASKOPS_UNROLL for (int j = 0; j < S::kVectors; ++j)
          sums[m][i] = S::fma(S::load(x + m * ldx + k + j * S::kLanes), e.v[j], sums[m][i]);
    }
  }
  for (int i = 0; i < RB; ++i) {
    for (int m = 0; m < MB; ++m) acc[m][i] = sums[m][i];
    for (int64_t t = k; t < range.end; ++t) {
      const T e = widen(effective<R>(vr[i], t, wr[i][t], task));
      for (int m = 0; m < MB; ++m) tail[m][i] += x[m * ldx + t] * e;
    }
  }
}

constexpr size_t kPrefetchAhead = 2;

// y[m, r .. r+RB) for MB rows of x over the K ranges; full ranges read no mask.
template <Rule R, int MB, int RB, class W, class T = accum_t<W>>
MASKOPS_INLINE void forward_rows(const T* x, int64_t ldx, const W* w, const Vis<W>& v, int64_t K,
                                 const std::vector<KRange>& ranges, unsigned task,
                                 Operand operand, int64_t r, T* y, int64_t ldy) {
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
        for (int64_t k = ahead.begin; k < ahead.end; k += 64 / int64_t(sizeof(W)))
          __builtin_prefetch(w + (r + i) * K + k, 0, 3);
    }
    if (range.full)
      forward_range<Rule::dense, MB, RB>(x, ldx, w, v, K, range, task, operand, r, acc, tail);
    else
      forward_range<R, MB, RB>(x, ldx, w, v, K, range, task, operand, r, acc, tail);
  }
  for (int i = 0; i < RB; ++i)
    for (int m = 0; m < MB; ++m) y[m * ldy + r + i] = S::sum(acc[m][i]) + tail[m][i];
}

template <Rule R, int MB, class W, class T = accum_t<W>>
MASKOPS_TARGET void forward_kernel(const T* x, int64_t ldx, const W* w, const Vis<W>& v, int64_t K,
                                   const std::vector<KRange>& ranges, unsigned task,
                                   int64_t rows_w, T* y, int64_t ldy) {
  // One row of x streams 8 weight rows at once (measured with AVX2: 8 rows ran block-sparse
  // weights 10-20% faster than 4, dense ones alike); more rows of x share the registers.
  constexpr int RB = MB == 1 ? 8 : MB == 2 ? 4 : 2;
  const Operand operand = operand_of<R>(task);
  int64_t r = 0;
  for (; r + RB <= rows_w; r += RB)
    forward_rows<R, MB, RB>(x, ldx, w, v, K, ranges, task, operand, r, y, ldy);
  for (; r < rows_w; ++r) forward_rows<R, MB, 1>(x, ldx, w, v, K, ranges, task, operand, r, y, ldy);
}

// gx[m, c] += sum_{i < RB} g[m, r + i] * w_eff[r + i, c]: RB weight rows per pass, so each
// gx element is loaded and stored once per RB rows.
template <Rule R, int MB, int RB, class T>
MASKOPS_INLINE void grad_input_rows(const T* g, int64_t ldg, const T* w, const Vis<T>& v,
                                    int64_t ldw, unsigned task, Operand operand, int64_t r,
                                    int64_t cols, T* gx, int64_t ldgx) {
  using S = Simd<T>;
  typename S::V gm[MB][RB];
  for (int m = 0; m < MB; ++m)
    for (int i = 0; i < RB; ++i) gm[m][i] = S::broadcast(g[m * ldg + r + i]);
  const T* wr[RB];
  Vis<T> vr[RB];
  for (int i = 0; i < RB; ++i) wr[i] = w + (r + i) * ldw, vr[i] = v.at((r + i) * ldw);
  int64_t c = 0;
  for (; c + kStep <= cols; c += kStep) {
    typename S::Block e[RB];
    MASKOPS_UNROLL for (int i = 0; i < RB; ++i) {
      Keep selected;
      e[i] = effective16<R>(wr[i], vr[i], c, operand, selected);
    }
    MASKOPS_UNROLL for (int m = 0; m < MB; ++m)
      MASKOPS_UNROLL for (int j = 0; j < S::kVectors; ++j) {
        T* out = gx + m * ldgx + c + j * S::kLanes;
        typename S::V acc = S::load(out);
        MASKOPS_UNROLL for (int i = 0; i < RB; ++i) acc = S::fma(gm[m][i], e[i].v[j], acc);
        S::store(out, acc);
      }
  }
  for (int i = 0; i < RB; ++i)
    for (int64_t t = c; t < cols; ++t) {
      const T e = effective<R>(vr[i], t, wr[i][t], task);
      for (int m = 0; m < MB; ++m) gx[m * ldgx + t] += g[m * ldg + r + i] * e;
    }
}

template <Rule R, int MB, class T>
MASKOPS_TARGET void grad_input_kernel(const T* g, int64_t ldg, const T* w, const Vis<T>& v,
                                      int64_t ldw, unsigned task, int64_t rows_w, int64_t cols,
                                      T* gx, int64_t ldgx) {
  constexpr int RB = 8 / Simd<T>::kVectors;  // RB * kVectors effective vectors in registers
  const Operand operand = operand_of<R>(task);
  int64_t r = 0;
  for (; r + RB <= rows_w; r += RB)
    grad_input_rows<R, MB, RB>(g, ldg, w, v, ldw, task, operand, r, cols, gx, ldgx);
  for (; r < rows_w; ++r)
    grad_input_rows<R, MB, 1>(g, ldg, w, v, ldw, task, operand, r, cols, gx, ldgx);
}

template <Rule R, class T>
MASKOPS_TARGET bool mask_kernel(const T* w, int64_t ldw, const Vis<T>& v, int64_t ldv,
                                unsigned task, int64_t rows, int64_t cols, T* out, int64_t ldo) {
  using S = Simd<T>;
  const Operand operand = operand_of<R>(task);
  bool selected_any = false;
  for (int64_t r = 0; r < rows; ++r) {
    const T* wr = w + r * ldw;
    const Vis<T> vr = v.at(r * ldv);
    T* o = out + r * ldo;
    int64_t c = 0;
    for (; c + kStep <= cols; c += kStep) {
      __builtin_prefetch(reinterpret_cast<const char*>(wr + c) + kMaskPrefetchBytes, 0, 3);
      Keep selected;
      const auto e = effective16<R>(wr, vr, c, operand, selected);
      for (int j = 0; j < S::kVectors; ++j) S::store(o + c + j * S::kLanes, e.v[j]);
      selected_any |= any(selected);
    }
    for (; c < cols; ++c) {
      o[c] = effective<R>(vr, c, wr[c], task);
      selected_any |= effective<R>(vr, c, T(1), task) != T(0);
    }
  }
  return selected_any;
}

#ifdef MASKOPS_BF16_DOT
// bfloat16 weights times bfloat16 rows of x with AVX-512 BF16 dot products: one instruction
// multiplies 32 weights (16 pairs) and adds them to 16 fp32 sums.  Each group of RB weight
// rows is read from memory (and masked) once for every row of x: passes over up to
// kDotSums / RB rows of x keep their sums in registers, the first pass reads the weights from
// memory and the others re-read them from L1; x's rows lie in L1/L2 (the caller pads them so
// that they do not share cache sets).
// Measured (AMD EPYC with AVX-512 BF16, 16 rows of x, N = K = 4096, 2/3 visible through a
// 1-bit map, 1 thread, medians of 25): passes of 6 rows x 4 weight rows 2.7 ms; 8 x 3 and
// 4 x 6 2.9 ms; 4 x 4 3.2 ms; 16 x 1 6.4 ms; the previous kernel (8 rows of x per pass, so
// the weights were read from memory twice, x narrowed on every call) 4.5 ms; oneDNN on a
// cached bfloat16 copy 2.44 ms.
#define MASKOPS_DOT_TARGET \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")))
#define MASKOPS_DOT_INLINE MASKOPS_DOT_TARGET inline __attribute__((always_inline))

constexpr int kDotSums = 24;  // registers of sums, leaving 8 for weights and x
constexpr int kDotPassRows = 6;

// The selection of elements i .. i+32: one load from a 1-bit map at a word boundary.
template <Rule R>
MASKOPS_DOT_INLINE __mmask32 keep32(const Vis<bf16>& v, int64_t i, Operand operand) {
  if constexpr (R == Rule::bits) {
    const int64_t p = v.bit_offset + i;
    if ((p & 31) == 0) return v.bits[p >> 5];
  }
  return __mmask32(keep<R>(v, i, operand)) | (__mmask32(keep<R>(v, i + kStep, operand)) << 16);
}

// sums[m * RB + i] += x[m, k] * w_eff[i, k] over the whole 32-element steps of [begin, end),
// for MB rows of x.  `from_memory`: the first pass, which asks for the weights ahead.
template <Rule R, int MB, int RB>
MASKOPS_DOT_INLINE void dot_pass(const bf16* x, int64_t ldx, const bf16* const (&wr)[RB],
                                 const Vis<bf16> (&vr)[RB], int64_t begin, int64_t end,
                                 Operand operand, bool from_memory, __m512* sums) {
  __m512 acc[MB][RB];
  for (int m = 0; m < MB; ++m)
    for (int i = 0; i < RB; ++i) acc[m][i] = sums[m * RB + i];
  for (int64_t k = begin; k + 2 * kStep <= end; k += 2 * kStep) {
    __m512i wv[RB];
    MASKOPS_UNROLL for (int i = 0; i < RB; ++i) {
      wv[i] = _mm512_loadu_si512(wr[i] + k);
      if constexpr (R != Rule::dense) {
        if (from_memory)
          __builtin_prefetch(reinterpret_cast<const char*>(wr[i] + k) + kPrefetchBytes, 0, 3);
        wv[i] = _mm512_maskz_mov_epi16(keep32<R>(vr[i], k, operand), wv[i]);
      }
    }
    MASKOPS_UNROLL for (int m = 0; m < MB; ++m) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * ldx + k);
      MASKOPS_UNROLL for (int i = 0; i < RB; ++i)
        acc[m][i] = _mm512_dpbf16_ps(acc[m][i], (__m512bh)wv[i], xv);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int i = 0; i < RB; ++i) sums[m * RB + i] = acc[m][i];
}

// y[m, r .. r+RB) for every row of x.
template <Rule R, int RB>
MASKOPS_DOT_INLINE void dot_rows(const bf16* x, int64_t ldx, int64_t rows_x, const bf16* w,
                                 const Vis<bf16>& v, int64_t K, const std::vector<KRange>& ranges,
                                 unsigned task, Operand operand, int64_t r, float* y, int64_t ldy) {
  constexpr int pass_rows = std::min(kDotPassRows, kDotSums / RB);
  const bf16* wr[RB];
  Vis<bf16> vr[RB];
  __m512 sums[kWideRows * RB];
  float tail[kWideRows][RB] = {};
  for (int i = 0; i < RB; ++i) {
    wr[i] = w + (r + i) * K;
    vr[i] = v.at((r + i) * K);
  }
  for (int64_t j = 0; j < rows_x * RB; ++j) sums[j] = _mm512_setzero_ps();
  for (size_t j = 0; j < ranges.size(); ++j) {
    const KRange& range = ranges[j];
    // Runs of visible blocks are scattered: ask for one a few runs ahead (as forward_rows).
    if (j + kPrefetchAhead < ranges.size()) {
      const KRange& ahead = ranges[j + kPrefetchAhead];
      for (int i = 0; i < RB; ++i)
        for (int64_t k = ahead.begin; k < ahead.end; k += 32) __builtin_prefetch(wr[i] + k, 0, 3);
    }
    for (int64_t m0 = 0; m0 < rows_x; m0 += pass_rows)
      with_rows_up_to<pass_rows>(std::min<int64_t>(pass_rows, rows_x - m0), [&](auto rows) MASKOPS_DOT_TARGET {
        constexpr int MB = decltype(rows)::value;
        const bf16* xm = x + m0 * ldx;
        if (range.full)
          dot_pass<Rule::dense, MB, RB>(xm, ldx, wr, vr, range.begin, range.end, operand, m0 == 0,
                                        sums + m0 * RB);
        else
          dot_pass<R, MB, RB>(xm, ldx, wr, vr, range.begin, range.end, operand, m0 == 0,
                              sums + m0 * RB);
      });
    for (int64_t t = range.end - (range.end - range.begin) % (2 * kStep); t < range.end; ++t)
      for (int i = 0; i < RB; ++i) {
        const float e = widen(effective<R>(vr[i], t, wr[i][t], task));
        for (int64_t m = 0; m < rows_x; ++m) tail[m][i] += widen(x[m * ldx + t]) * e;
      }
  }
  for (int64_t m = 0; m < rows_x; ++m)
    for (int i = 0; i < RB; ++i)
      y[m * ldy + r + i] = Simd<float>::sum(sums[m * RB + i]) + tail[m][i];
}

// Weight rows [r, rows_w) in groups of RB, then of RB / 2, ... 1.
template <Rule R, int RB>
MASKOPS_DOT_INLINE void dot_row_groups(const bf16* x, int64_t ldx, int64_t rows_x, const bf16* w,
                                       const Vis<bf16>& v, int64_t K,
                                       const std::vector<KRange>& ranges, unsigned task,
                                       Operand operand, int64_t r, int64_t rows_w, float* y,
                                       int64_t ldy) {
  for (; r + RB <= rows_w; r += RB)
    dot_rows<R, RB>(x, ldx, rows_x, w, v, K, ranges, task, operand, r, y, ldy);
  if constexpr (RB > 1)
    dot_row_groups<R, RB / 2>(x, ldx, rows_x, w, v, K, ranges, task, operand, r, rows_w, y, ldy);
}

template <Rule R>
MASKOPS_DOT_TARGET void dot_kernel(const bf16* x, int64_t ldx, int64_t rows_x, const bf16* w,
                                   const Vis<bf16>& v, int64_t K,
                                   const std::vector<KRange>& ranges, unsigned task,
                                   int64_t rows_w, float* y, int64_t ldy) {
  const Operand operand = operand_of<R>(task);
  // Few rows of x: more weight rows in flight, since one stream alone draws too little of the
  // memory bandwidth (as forward_kernel).
  if (rows_x <= 2)
    dot_row_groups<R, 8>(x, ldx, rows_x, w, v, K, ranges, task, operand, 0, rows_w, y, ldy);
  else
    dot_row_groups<R, 4>(x, ldx, rows_x, w, v, K, ranges, task, operand, 0, rows_w, y, ldy);
}
#endif

// mask_kernel for 16-bit weights: the selection applied to their bit patterns.
template <Rule R, class W>
MASKOPS_TARGET bool mask16_kernel(const W* w, int64_t ldw, const Vis<W>& v, int64_t ldv,
                                  unsigned task, int64_t rows, int64_t cols, W* out, int64_t ldo) {
  const W one = narrow<W>(1.f);
  const Operand operand = operand_of<R>(task);
  bool selected_any = false;
  for (int64_t r = 0; r < rows; ++r) {
    const W* wr = w + r * ldw;
    const Vis<W> vr = v.at(r * ldv);
    W* o = out + r * ldo;
    int64_t c = 0;
    if constexpr (R != Rule::soft) {  // soft masks multiply: the scalar loop below
      for (; c + kStep <= cols; c += kStep) {
        __builtin_prefetch(reinterpret_cast<const char*>(wr + c) + kMaskPrefetchBytes, 0, 3);
        const Keep selected = keep<R>(vr, c, operand);
        select16(selected, &wr[c].bits, &o[c].bits);
        selected_any |= any(selected);
      }
    }
    for (; c < cols; ++c) {
      o[c] = effective<R>(vr, c, wr[c], task);
      selected_any |= widen(effective<R>(vr, c, one, task)) != 0.f;
    }
  }
  return selected_any;
}

}  // namespace

template <class W>
void few_rows_forward(const accum_t<W>* x, int64_t ldx, int64_t rows_x, const W* w,
                      const Vis<W>& v, int64_t K, const std::vector<KRange>& ranges, unsigned task,
                      int64_t rows_w, accum_t<W>* y, int64_t ldy) {
  for (int64_t r0 = 0; r0 < rows_x; r0 += kFewRows)
    with_rule_and_rows(v, std::min(kFewRows, rows_x - r0), [&](auto rule, auto rows) {
      forward_kernel<decltype(rule)::value, decltype(rows)::value>(
          x + r0 * ldx, ldx, w, v, K, ranges, task, rows_w, y + r0 * ldy, ldy);
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
    if constexpr (is_16bit_v<T>)
      return mask16_kernel<decltype(rule)::value>(w, ldw, v, ldv, task, rows, cols, out, ldo);
    else
      return mask_kernel<decltype(rule)::value>(w, ldw, v, ldv, task, rows, cols, out, ldo);
  });
}

#ifdef MASKOPS_BF16_DOT
MASKOPS_DOT_TARGET void dot_forward(const bf16* x, int64_t ldx, int64_t rows_x, const bf16* w,
                                    const Vis<bf16>& v, int64_t K,
                                    const std::vector<KRange>& ranges, unsigned task,
                                    int64_t rows_w, float* y, int64_t ldy) {
  with_rule(v, [&](auto rule) {
    constexpr Rule R = decltype(rule)::value;
    if constexpr (R != Rule::soft)
      dot_kernel<R>(x, ldx, rows_x, w, v, K, ranges, task, rows_w, y, ldy);
  });
}

MASKOPS_DOT_TARGET void narrow_rows(const float* x, int64_t ldx, int64_t rows, int64_t K,
                                    bf16* out, int64_t ldo) {
  for (int64_t m = 0; m < rows; ++m) {
    const float* xm = x + m * ldx;
    bf16* o = out + m * ldo;
    int64_t k = 0;
    for (; k + 2 * kStep <= K; k += 2 * kStep)
      _mm512_storeu_si512(o + k, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(xm + k + kStep),
                                                              _mm512_loadu_ps(xm + k)));
    for (; k < K; ++k) o[k] = to_bf16(xm[k]);
  }
}
#endif

MASKOPS_INSTANTIATE_FUSED(float)
MASKOPS_INSTANTIATE_FUSED(double)
MASKOPS_INSTANTIATE_FUSED_16BIT(bf16)
MASKOPS_INSTANTIATE_FUSED_16BIT(f16)

}  // namespace maskops::cpu::MASKOPS_ISA
