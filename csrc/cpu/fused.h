// The fused loops of few_rows.h and mask_block (masking.h), written once over a SIMD
// abstraction and compiled once per instruction set: a fused_<isa>.cpp file includes its
// simd_<isa>.h (which defines MASKOPS_ISA's vectors and the MASKOPS_TARGET/MASKOPS_INLINE
// attributes), then this file.  Everything lands in namespace maskops::cpu::<isa>, so the
// copies never meet at link time.
//
// The weight is read in steps of 16 elements: one selection (`Keep`) per step, built from 16
// owner or mask bytes or 16 bits of a 1-bit map, masks the step's weights on load.
#pragma once

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
// bfloat16 weights times fp32 x with AVX-512 BF16 dot products: one instruction multiplies 32
// weights (16 pairs) and adds them to 16 fp32 sums; x (bfloat16 before the caller widened it)
// is rounded back exactly, once per call.  With registers to spare, calls take up to kWideRows
// rows, so each selection is applied for 8 rows of x instead of 4.  Measured (16 rows,
// N = K = 4096, 2/3 visible, 1 thread, interleaved medians): 4.7 ms; the widening loop above
// 6.4 ms; oneDNN on a cached bfloat16 copy 3.1 ms.
#define MASKOPS_DOT_TARGET \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")))
#define MASKOPS_DOT_INLINE MASKOPS_DOT_TARGET inline __attribute__((always_inline))

// x (fp32, widened bfloat16) and xb, its rows back in bfloat16 (row stride K).
template <Rule R, int MB, int RB>
MASKOPS_DOT_INLINE void dot_range(const float* x, int64_t ldx, const bf16* xb, int64_t K,
                                  const bf16* const (&wr)[RB], const Vis<bf16> (&vr)[RB],
                                  const KRange& range, unsigned task, Operand operand,
                                  __m512 (&acc)[MB][RB], float (&tail)[MB][RB]) {
  int64_t k = range.begin;
  for (; k + 2 * kStep <= range.end; k += 2 * kStep) {
    __m512bh xv[MB];
    MASKOPS_UNROLL for (int m = 0; m < MB; ++m)
      xv[m] = (__m512bh)_mm512_loadu_si512(xb + m * K + k);
    MASKOPS_UNROLL for (int i = 0; i < RB; ++i) {
      __m512i wv = _mm512_loadu_si512(wr[i] + k);
      if constexpr (R != Rule::dense) {
        __builtin_prefetch(reinterpret_cast<const char*>(wr[i] + k) + kPrefetchBytes, 0, 3);
        const __mmask32 selected = __mmask32(keep<R>(vr[i], k, operand)) |
                                   (__mmask32(keep<R>(vr[i], k + kStep, operand)) << 16);
        wv = _mm512_maskz_mov_epi16(selected, wv);
      }
      MASKOPS_UNROLL for (int m = 0; m < MB; ++m)
        acc[m][i] = _mm512_dpbf16_ps(acc[m][i], (__m512bh)wv, xv[m]);
    }
  }
  for (int i = 0; i < RB; ++i)
    for (int64_t t = k; t < range.end; ++t) {
      const float e = widen(effective<R>(vr[i], t, wr[i][t], task));
      for (int m = 0; m < MB; ++m) tail[m][i] += x[m * ldx + t] * e;
    }
}

template <Rule R, int MB, int RB>
MASKOPS_DOT_INLINE void dot_rows(const float* x, int64_t ldx, const bf16* xb, const bf16* w,
                                 const Vis<bf16>& v, int64_t K, const std::vector<KRange>& ranges,
                                 unsigned task, Operand operand, int64_t r, float* y, int64_t ldy) {
  const bf16* wr[RB];
  Vis<bf16> vr[RB];
  __m512 acc[MB][RB];
  float tail[MB][RB] = {};
  for (int i = 0; i < RB; ++i) {
    wr[i] = w + (r + i) * K;
    vr[i] = v.at((r + i) * K);
    for (int m = 0; m < MB; ++m) acc[m][i] = _mm512_setzero_ps();
  }
  for (const KRange& range : ranges) {
    if (range.full)
      dot_range<Rule::dense, MB, RB>(x, ldx, xb, K, wr, vr, range, task, operand, acc, tail);
    else
      dot_range<R, MB, RB>(x, ldx, xb, K, wr, vr, range, task, operand, acc, tail);
  }
  for (int i = 0; i < RB; ++i)
    for (int m = 0; m < MB; ++m) y[m * ldy + r + i] = Simd<float>::sum(acc[m][i]) + tail[m][i];
}

template <Rule R, int MB>
MASKOPS_DOT_TARGET void dot_kernel(const float* x, int64_t ldx, const bf16* w, const Vis<bf16>& v,
                                   int64_t K, const std::vector<KRange>& ranges, unsigned task,
                                   int64_t rows_w, float* y, int64_t ldy) {
  constexpr int RB = MB == 1 ? 8 : MB == 2 ? 4 : 2;
  // x back in bfloat16 once per call (exact: it was bfloat16), not once per weight row.
  bf16* xb = thread_scratch<bf16>(MB * K);
  for (int m = 0; m < MB; ++m) {
    int64_t k = 0;
    for (; k + 2 * kStep <= K; k += 2 * kStep)
      _mm512_storeu_si512(xb + m * K + k, (__m512i)_mm512_cvtne2ps_pbh(
                                              _mm512_loadu_ps(x + m * ldx + k + kStep),
                                              _mm512_loadu_ps(x + m * ldx + k)));
    for (; k < K; ++k) xb[m * K + k] = to_bf16(x[m * ldx + k]);
  }
  const Operand operand = operand_of<R>(task);
  int64_t r = 0;
  for (; r + RB <= rows_w; r += RB)
    dot_rows<R, MB, RB>(x, ldx, xb, w, v, K, ranges, task, operand, r, y, ldy);
  for (; r < rows_w; ++r) dot_rows<R, MB, 1>(x, ldx, xb, w, v, K, ranges, task, operand, r, y, ldy);
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
#ifdef MASKOPS_BF16_DOT
  if constexpr (std::is_same_v<W, bf16>) {
    if (active_isa() == Isa::avx512bf16 && v.mode != Mode::mask) {  // soft masks multiply
      with_rule(v, [&](auto rule) {
        constexpr Rule R = decltype(rule)::value;
        if constexpr (R != Rule::soft && R != Rule::binary) {
          with_rows_up_to<int(kWideRows)>(rows_x, [&](auto rows) {
            dot_kernel<R, decltype(rows)::value>(x, ldx, w, v, K, ranges, task, rows_w, y, ldy);
          });
        }
      });
      return;
    }
  }
#endif
  // Up to kFewRows rows per kernel; more only where a caller takes kWideRows (mask mode on the
  // avx512bf16 level).
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

MASKOPS_INSTANTIATE_FUSED(float)
MASKOPS_INSTANTIATE_FUSED(double)
MASKOPS_INSTANTIATE_FUSED_16BIT(bf16)
MASKOPS_INSTANTIATE_FUSED_16BIT(f16)

}  // namespace maskops::cpu::MASKOPS_ISA
