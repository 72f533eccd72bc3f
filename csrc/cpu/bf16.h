// bfloat16 weights: stored as 16 bits (the layout of torch's BFloat16), computed in fp32.
#pragma once

#include <cstdint>
#include <cstring>

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

// The type products of W weights accumulate in: fp32 for bfloat16, else W itself.
template <class W>
struct Accumulator {
  using type = W;
};
template <>
struct Accumulator<bf16> {
  using type = float;
};
template <class W>
using accum_t = typename Accumulator<W>::type;

}  // namespace maskops::cpu
