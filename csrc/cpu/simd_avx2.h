// AVX2 + FMA vectors for fused.h: a register holds 8 floats or 4 doubles; the selection of 16
// elements is 16 bytes (0xFF selected, 0x00 not), widened to lane masks.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "bf16.h"

#define MASKOPS_TARGET __attribute__((target("avx2,fma")))
#define MASKOPS_INLINE MASKOPS_TARGET inline __attribute__((always_inline))

namespace maskops::cpu::MASKOPS_ISA {

using Keep = __m128i;
using Operand = __m128i;

MASKOPS_INLINE Operand broadcast_byte(uint8_t b) { return _mm_set1_epi8(char(b)); }
MASKOPS_INLINE Keep keep_all() { return _mm_set1_epi8(char(0xFF)); }
MASKOPS_INLINE bool any(Keep k) { return !_mm_testz_si128(k, k); }
MASKOPS_INLINE Keep keep_bits(uint32_t bits) {
  // Byte j takes byte j / 8 of the bits, then tests bit j % 8 of it.
  const __m128i spread = _mm_shuffle_epi8(_mm_cvtsi32_si128(int(bits)),
                                          _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
  const __m128i bit = _mm_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
  return _mm_cmpeq_epi8(_mm_and_si128(spread, bit), bit);
}
MASKOPS_INLINE __m128i load16(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
// owner - 1 <= operand as unsigned bytes (owner 0 wraps to 255).
MASKOPS_INLINE Keep keep_at_most(const uint8_t* owner, Operand o) {
  const __m128i d = _mm_sub_epi8(load16(owner), _mm_set1_epi8(1));
  return _mm_cmpeq_epi8(_mm_min_epu8(d, o), d);
}
MASKOPS_INLINE Keep keep_equal(const uint8_t* owner, Operand o) {
  return _mm_cmpeq_epi8(load16(owner), o);
}
MASKOPS_INLINE Keep keep_nonzero(const uint8_t* bytes) {
  return _mm_xor_si128(_mm_cmpeq_epi8(load16(bytes), _mm_setzero_si128()), keep_all());
}

// out[j] = p[j] where element j is selected, else +0 (16-bit weights, as bit patterns).
MASKOPS_INLINE void select16(Keep k, const uint16_t* p, uint16_t* out) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_and_si256(_mm256_cvtepi8_epi16(k), v));
}

template <class T>
struct Simd;

template <>
struct Simd<float> {
  using V = __m256;
  static constexpr int kLanes = 8, kVectors = 2;
  struct Block {  // 16 elements (not std::array, which would drop V's attributes)
    V v[kVectors];
  };
  static MASKOPS_INLINE V load(const float* p) { return _mm256_loadu_ps(p); }
  static MASKOPS_INLINE V load(const bf16* p) {  // bfloat16 is the high half of a float
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static MASKOPS_INLINE void store(float* p, V a) { _mm256_storeu_ps(p, a); }
  static MASKOPS_INLINE V zero() { return _mm256_setzero_ps(); }
  static MASKOPS_INLINE V broadcast(float a) { return _mm256_set1_ps(a); }
  static MASKOPS_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static MASKOPS_INLINE V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static MASKOPS_INLINE float sum(V a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static MASKOPS_INLINE V load(const f16* p) {  // lane by lane: F16C is not assumed
    alignas(32) float lanes[kLanes];
    for (int l = 0; l < kLanes; ++l) lanes[l] = widen(p[l]);
    return _mm256_load_ps(lanes);
  }
  template <class W>
  static MASKOPS_INLINE Block select(Keep k, const W* p) {
    const __m256 lo = _mm256_castsi256_ps(_mm256_cvtepi8_epi32(k));
    const __m256 hi = _mm256_castsi256_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(k, k)));
    return {{_mm256_and_ps(lo, load(p)), _mm256_and_ps(hi, load(p + 8))}};
  }
};

template <>
struct Simd<double> {
  using V = __m256d;
  static constexpr int kLanes = 4, kVectors = 4;
  struct Block {
    V v[kVectors];
  };
  static MASKOPS_INLINE V load(const double* p) { return _mm256_loadu_pd(p); }
  static MASKOPS_INLINE void store(double* p, V a) { _mm256_storeu_pd(p, a); }
  static MASKOPS_INLINE V zero() { return _mm256_setzero_pd(); }
  static MASKOPS_INLINE V broadcast(double a) { return _mm256_set1_pd(a); }
  static MASKOPS_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static MASKOPS_INLINE V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static MASKOPS_INLINE double sum(V a) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  static MASKOPS_INLINE Block select(Keep k, const double* p) {
    // Bytes 4j .. 4j+3 of the selection widen to the four 64-bit lanes of vector j.
    const __m128i parts[kVectors] = {k, _mm_srli_si128(k, 4), _mm_srli_si128(k, 8),
                                     _mm_srli_si128(k, 12)};
    Block b;
    for (int j = 0; j < kVectors; ++j)
      b.v[j] = _mm256_and_pd(_mm256_castsi256_pd(_mm256_cvtepi8_epi64(parts[j])), load(p + 4 * j));
    return b;
  }
};

constexpr int kRegisters = 16;

}  // namespace maskops::cpu::MASKOPS_ISA
