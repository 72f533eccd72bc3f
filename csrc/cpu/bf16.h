// bfloat16 weights: stored as 16 bits (the layout of torch's BFloat16), computed in fp32.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "f16.h"

namespace maskops::cpu {

struct bf16 {
  uint16_t bits;
};

inline float widen(bf16 v) {
  const uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline float widen(float v) { return v; }
inline double widen(double v) { return v; }

// Round to nearest even, as torch does; NaN stays NaN.
inline bf16 to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return bf16{uint16_t((u >> 16) | 0x40)};
  u += 0x7FFFu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

// 16-bit floating types (bfloat16, half), kept as bit patterns and computed in fp32.
template <class W>
constexpr bool is_16bit_v = std::is_same_v<W, bf16> || std::is_same_v<W, f16>;

// fp32 rounded to the 16-bit type W.
template <class W>
inline W narrow(float f) {
  if constexpr (std::is_same_v<W, bf16>)
    return to_bf16(f);
  else
    return to_f16(f);
}

// The type products of W weights accumulate in: fp32 for 16-bit types, else W itself.
template <class W>
using accum_t = std::conditional_t<is_16bit_v<W>, float, W>;

}  // namespace maskops::cpu
