// Which weights take part in a masked matmul or convolution, and the per-element rule.
//
// Torch-free: raw pointers into row-major arrays that have the weight's layout.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../modes.h"
#include "bf16.h"

namespace maskops::cpu {

// dense, visible, trainable or mask (bits is a GPU format).
using Mode = ::maskops::Mode;

template <class T>
struct Vis {
  Mode mode = Mode::dense;
  const uint8_t* owner = nullptr;   // visible / trainable
  const uint8_t* binary = nullptr;  // mask mode, uint8 0/1
  const T* soft = nullptr;          // mask mode, floating
  // Visible mode, when set: the 1-bit map of `task` (bit p % 32 of word p / 32 for element p
  // of the weight), read instead of the owner: 1/8 of its traffic.
  const uint32_t* bits = nullptr;
  int64_t bit_offset = 0;           // the element `bits` describes at index 0
  int task = 1;                     // rows of several tasks are grouped by the caller (task_groups.h)

  // The same selection for the block that starts `offset` elements into the weight.
  Vis at(int64_t offset) const {
    Vis v = *this;
    if (owner) v.owner += offset;
    if (binary) v.binary += offset;
    if (soft) v.soft += offset;
    v.bit_offset += offset;
    return v;
  }
  // Only visible/trainable depend on the task.
  bool per_task() const { return mode == Mode::visible || mode == Mode::trainable; }
};

// The per-element rule, as a compile-time constant for the inner loops.
enum class Rule { dense, visible, trainable, binary, soft, bits };

// w when keep, else +0.  Done on the bits rather than with `?:` or a multiply: compilers
// vectorize it on any SIMD level (a `?:` becomes a branch in some loops), and an unselected
// inf/nan becomes an exact zero.
template <class T>
inline T keep_if(bool keep, T w) {
  using Bits = std::conditional_t<sizeof(T) == 2, uint16_t,
                                  std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;
  static_assert(sizeof(Bits) == sizeof(T), "a 16-bit type, float or double");
  Bits bits;
  std::memcpy(&bits, &w, sizeof bits);
  bits &= Bits(0) - Bits(keep);
  std::memcpy(&w, &bits, sizeof bits);
  return w;
}

// The effective weight of element i for `task`.
template <Rule R, class T>
inline T effective(const Vis<T>& v, int64_t i, T w, unsigned task) {
  if constexpr (R == Rule::visible) {
    return keep_if(unsigned(v.owner[i]) - 1u < task, w);  // owner 0 wraps to UINT_MAX
  } else if constexpr (R == Rule::trainable) {
    return keep_if(unsigned(v.owner[i]) == task, w);
  } else if constexpr (R == Rule::binary) {
    return keep_if(v.binary[i] != 0, w);
  } else if constexpr (R == Rule::soft) {
    if constexpr (is_16bit_v<T>)
      return narrow<T>(widen(w) * widen(v.soft[i]));
    else
      return w * v.soft[i];
  } else if constexpr (R == Rule::bits) {
    const int64_t p = v.bit_offset + i;
    return keep_if((v.bits[p >> 5] >> (p & 31)) & 1u, w);
  } else {
    return w;
  }
}

constexpr bool kLittleEndian = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;

// Bits i .. i + 15 of a 1-bit map, as bits 0 .. 15 (the 16 elements exist).  The kernels
// step through whole words, where this is one 16-bit load.
template <class T>
inline uint32_t bits16(const Vis<T>& v, int64_t i) {
  const int64_t p = v.bit_offset + i;
  if (kLittleEndian && (p & 15) == 0) {
    uint16_t half;
    std::memcpy(&half, reinterpret_cast<const char*>(v.bits) + (p >> 3), sizeof half);
    return half;  // bits 16 h .. 16 h + 15 are half-word h
  }
  const int shift = int(p & 31);
  uint32_t word = v.bits[p >> 5] >> shift;
  if (shift > 16) word |= v.bits[(p >> 5) + 1] << (32 - shift);
  return word & 0xFFFFu;
}

template <Rule R>
using RuleConstant = std::integral_constant<Rule, R>;

// Calls f(RuleConstant<R>{}) with the rule of `v`, so each loop is compiled per rule;
// inside, `constexpr Rule R = decltype(rule)::value;`.
template <class T, class F>
inline decltype(auto) with_rule(const Vis<T>& v, F&& f) {
  switch (v.mode) {
    case Mode::visible:
      return v.bits ? f(RuleConstant<Rule::bits>{}) : f(RuleConstant<Rule::visible>{});
    case Mode::trainable: return f(RuleConstant<Rule::trainable>{});
    case Mode::mask:
      return v.soft ? f(RuleConstant<Rule::soft>{}) : f(RuleConstant<Rule::binary>{});
    default: return f(RuleConstant<Rule::dense>{});
  }
}

}  // namespace maskops::cpu
