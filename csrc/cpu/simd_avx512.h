// AVX-512 (F, BW, VL, DQ) vectors for fused.h: a register holds 16 floats or 8 doubles; the
// selection of 16 elements is one mask register.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "bf16.h"

#define MASKOPS_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define MASKOPS_INLINE MASKOPS_TARGET inline __attribute__((always_inline))

namespace maskops::cpu::MASKOPS_ISA {

using Keep = __mmask16;
using Operand = __m128i;

MASKOPS_INLINE Operand broadcast_byte(uint8_t b) { return _mm_set1_epi8(char(b)); }
MASKOPS_INLINE Keep keep_all() { return Keep(0xFFFF); }
MASKOPS_INLINE bool any(Keep k) { return k != 0; }
MASKOPS_INLINE Keep keep_bits(uint32_t bits) { return Keep(bits); }
MASKOPS_INLINE __m128i load16(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
// owner - 1 <= operand as unsigned bytes (owner 0 wraps to 255).
MASKOPS_INLINE Keep keep_at_most(const uint8_t* owner, Operand o) {
  return _mm_cmple_epu8_mask(_mm_sub_epi8(load16(owner), _mm_set1_epi8(1)), o);
}
MASKOPS_INLINE Keep keep_equal(const uint8_t* owner, Operand o) {
  return _mm_cmpeq_epi8_mask(load16(owner), o);
}
MASKOPS_INLINE Keep keep_nonzero(const uint8_t* bytes) {
  const __m128i b = load16(bytes);
  return _mm_test_epi8_mask(b, b);
}

// out[j] = p[j] where element j is selected, else +0 (16-bit weights, as bit patterns).
MASKOPS_INLINE void select16(Keep k, const uint16_t* p, uint16_t* out) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_maskz_mov_epi16(k, v));
}

template <class T>
struct Simd;

template <>
struct Simd<float> {
  using V = __m512;
  static constexpr int kLanes = 16, kVectors = 1;
  struct Block {
    V v[kVectors];
  };
  static MASKOPS_INLINE V load(const float* p) { return _mm512_loadu_ps(p); }
  static MASKOPS_INLINE V load(const bf16* p) {  // bfloat16 is the high half of a float
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    // The zero-masked forms: the unmasked ones trip GCC 12's maybe-uninitialized warning.
    const __m512i widened = _mm512_maskz_cvtepu16_epi32(0xFFFF, h);
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, widened, 16));
  }
  static MASKOPS_INLINE void store(float* p, V a) { _mm512_storeu_ps(p, a); }
  static MASKOPS_INLINE V zero() { return _mm512_setzero_ps(); }
  static MASKOPS_INLINE V broadcast(float a) { return _mm512_set1_ps(a); }
  static MASKOPS_INLINE V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static MASKOPS_INLINE V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static MASKOPS_INLINE float sum(V a) {
    // Halves, then quarters folded together.  The masked shuffles take an explicit source:
    // the unmasked ones (and _mm512_reduce_add_ps) trip GCC 12's maybe-uninitialized warning.
    V s = _mm512_add_ps(a, _mm512_mask_shuffle_f32x4(a, 0xFFFF, a, a, 0x4E));
    s = _mm512_add_ps(s, _mm512_mask_shuffle_f32x4(s, 0xFFFF, s, s, 0xB1));
    alignas(64) float lanes[kLanes];
    _mm512_store_ps(lanes, s);
    return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  }
  static MASKOPS_INLINE V load(const f16* p) {
    return _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  // A plain load, then the selection: the load need not wait for the mask.
  template <class W>
  static MASKOPS_INLINE Block select(Keep k, const W* p) { return {{_mm512_maskz_mov_ps(k, load(p))}}; }
};

template <>
struct Simd<double> {
  using V = __m512d;
  static constexpr int kLanes = 8, kVectors = 2;
  struct Block {
    V v[kVectors];
  };
  static MASKOPS_INLINE V load(const double* p) { return _mm512_loadu_pd(p); }
  static MASKOPS_INLINE void store(double* p, V a) { _mm512_storeu_pd(p, a); }
  static MASKOPS_INLINE V zero() { return _mm512_setzero_pd(); }
  static MASKOPS_INLINE V broadcast(double a) { return _mm512_set1_pd(a); }
  static MASKOPS_INLINE V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static MASKOPS_INLINE V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  static MASKOPS_INLINE double sum(V a) {
    V s = _mm512_add_pd(a, _mm512_mask_shuffle_f64x2(a, 0xFF, a, a, 0x4E));
    s = _mm512_add_pd(s, _mm512_mask_shuffle_f64x2(s, 0xFF, s, s, 0xB1));
    alignas(64) double lanes[kLanes];
    _mm512_store_pd(lanes, s);
    return lanes[0] + lanes[1];
  }
  static MASKOPS_INLINE Block select(Keep k, const double* p) {
    return {{_mm512_maskz_mov_pd(__mmask8(k), load(p)), _mm512_maskz_mov_pd(__mmask8(k >> 8), load(p + 8))}};
  }
};

constexpr int kRegisters = 32;

}  // namespace maskops::cpu::MASKOPS_ISA
