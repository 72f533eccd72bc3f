// IEEE half-precision weights: stored as 16 bits (the layout of torch's Half), computed in fp32.
// The conversions use the compiler's _Float16 (GCC >= 12, Clang >= 15), which rounds to nearest
// even as torch does.
#pragma once

#include <cstdint>
#include <cstring>

namespace maskops::cpu {

struct f16 {
  uint16_t bits;
};

inline float widen(f16 v) {
  _Float16 h;
  std::memcpy(&h, &v.bits, sizeof h);
  return float(h);
}

inline f16 to_f16(float f) {
  const _Float16 h = _Float16(f);
  f16 v;
  std::memcpy(&v.bits, &h, sizeof v.bits);
  return v;
}

}  // namespace maskops::cpu
