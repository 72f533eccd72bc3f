// Portable vectors for fused.h: GCC/Clang vector extensions, which compile to the SIMD of any
// target (SSE2 on a baseline x86-64, NEON on AArch64).  The selection of 16 elements is 16
// bytes, -1 where selected.
#pragma once

#include <cstdint>
#include <cstring>

#include "bf16.h"

#define MASKOPS_TARGET
#define MASKOPS_INLINE inline __attribute__((always_inline))

namespace maskops::cpu::MASKOPS_ISA {

typedef uint8_t Bytes __attribute__((vector_size(16)));
typedef int8_t Keep __attribute__((vector_size(16)));  // byte j: -1 where element j is selected
using Operand = uint8_t;  // a byte the owner is compared with

MASKOPS_INLINE Bytes load16(const uint8_t* p) {
  Bytes b;
  std::memcpy(&b, p, sizeof b);
  return b;
}
MASKOPS_INLINE Operand broadcast_byte(uint8_t b) { return b; }
MASKOPS_INLINE Keep keep_all() { return Keep{} - 1; }
MASKOPS_INLINE bool any(Keep k) {
  uint64_t halves[2];
  std::memcpy(halves, &k, sizeof halves);
  return (halves[0] | halves[1]) != 0;
}
MASKOPS_INLINE Keep keep_bits(uint32_t bits) {
  Keep k;
  for (int j = 0; j < 16; ++j) k[j] = int8_t(-int((bits >> j) & 1u));
  return k;
}
// owner - 1 <= operand as unsigned bytes (owner 0 wraps to 255).
MASKOPS_INLINE Keep keep_at_most(const uint8_t* owner, Operand o) {
  return (Keep)(load16(owner) - 1 <= o);
}
MASKOPS_INLINE Keep keep_equal(const uint8_t* owner, Operand o) { return (Keep)(load16(owner) == o); }
MASKOPS_INLINE Keep keep_nonzero(const uint8_t* bytes) { return (Keep)(load16(bytes) != 0); }

// out[j] = p[j] where element j is selected, else +0 (16-bit weights, as bit patterns).
MASKOPS_INLINE void select16(Keep k, const uint16_t* p, uint16_t* out) {
  for (int j = 0; j < 16; ++j) out[j] = uint16_t(p[j] & uint16_t(int16_t(k[j])));
}

// 16-byte vectors: the width every SIMD target has (SSE2, NEON).
template <class T, class Lane, class Vec, class LaneMask>
struct VectorOps {
  using V = Vec;
  static constexpr int kLanes = int(sizeof(V) / sizeof(T)), kVectors = 16 / kLanes;
  struct Block {
    V v[kVectors];
  };
  static MASKOPS_INLINE V load(const T* p) {
    V a;
    std::memcpy(&a, p, sizeof a);
    return a;
  }
  template <class W, class = std::enable_if_t<is_16bit_v<W>>>
  static MASKOPS_INLINE V load(const W* p) {
    V a;
    for (int l = 0; l < kLanes; ++l) a[l] = widen(p[l]);
    return a;
  }
  static MASKOPS_INLINE void store(T* p, V a) { std::memcpy(p, &a, sizeof a); }
  static MASKOPS_INLINE V zero() { return V{}; }
  static MASKOPS_INLINE V broadcast(T a) { return V{} + a; }
  static MASKOPS_INLINE V fma(V a, V b, V c) { return a * b + c; }
  static MASKOPS_INLINE V mul(V a, V b) { return a * b; }
  static MASKOPS_INLINE T sum(V a) {
    T s = 0;
    for (int l = 0; l < kLanes; ++l) s += a[l];
    return s;
  }
  // Elements 0..15 at p, exact zeros where not kept (on the bits: inf and NaN too).
  template <class W>
  static MASKOPS_INLINE Block select(Keep k, const W* p) {
    Block b;
    for (int j = 0; j < kVectors; ++j) {
      LaneMask m;
      for (int l = 0; l < kLanes; ++l) m[l] = Lane(k[j * kLanes + l]);  // -1 or 0, widened
      b.v[j] = (V)((LaneMask)load(p + j * kLanes) & m);
    }
    return b;
  }
};

typedef float Floats __attribute__((vector_size(16)));
typedef int32_t FloatMask __attribute__((vector_size(16)));
typedef double Doubles __attribute__((vector_size(16)));
typedef int64_t DoubleMask __attribute__((vector_size(16)));

template <class T>
struct Simd;
template <>
struct Simd<float> : VectorOps<float, int32_t, Floats, FloatMask> {};
template <>
struct Simd<double> : VectorOps<double, int64_t, Doubles, DoubleMask> {};

// Kernels with this many vector registers keep their sums in registers.
constexpr int kRegisters = 16;

}  // namespace maskops::cpu::MASKOPS_ISA
