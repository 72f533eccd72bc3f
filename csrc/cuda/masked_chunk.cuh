// Loading eight consecutive 16-bit elements (one 16-byte vector, a "chunk") of a row-major
// matrix, and zeroing the ones a mask does not select, in registers.
//
// The mask arrays share the weight's layout, so a chunk of the weight and the chunk of the
// mask at the same (row, col) line up whatever role the weight plays in a product.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "launch.h"

namespace maskops::cuda {

template <class T> struct Pair;
template <> struct Pair<__half> { using type = __half2; };
template <> struct Pair<__nv_bfloat16> { using type = __nv_bfloat162; };

// Arithmetic type of an element: float for the 16-bit types (whose operators torch builds
// switch off), the type itself otherwise.
__device__ inline float widen(__half v) { return __half2float(v); }
__device__ inline float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ inline float widen(float v) { return v; }
__device__ inline double widen(double v) { return v; }

template <class T> __device__ inline T narrow(float v);
template <> __device__ inline __half narrow(float v) { return __float2half_rn(v); }
template <> __device__ inline __nv_bfloat16 narrow(float v) { return __float2bfloat16_rn(v); }

__device__ inline uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// A Vis on a row-major matrix with `ld` elements per row (bits: `bits_ld` words per row).
struct MaskView {
  Mode mode = Mode::dense;
  const uint8_t* bytes = nullptr;  // owner, or binary mask
  const void* soft = nullptr;      // floating mask
  const uint32_t* bits = nullptr;
  int64_t ld = 0, bits_ld = 0;

  __host__ __device__ bool per_task() const { return mode == Mode::visible || mode == Mode::trainable; }
};

inline MaskView mask_view(const Vis& v, int64_t cols) {
  MaskView m;
  m.mode = v.mode;
  if (v.mode == Mode::visible || v.mode == Mode::trainable) m.bytes = v.owner;
  if (v.mode == Mode::mask) {
    if (v.soft) {
      m.soft = v.mask;
    } else {
      m.bytes = static_cast<const uint8_t*>(v.mask);
    }
  }
  m.bits = v.bits;
  m.ld = cols;
  m.bits_ld = (cols + 31) / 32;
  return m;
}

// Elements (r, c .. c+7) of a (rows, cols) matrix; zero outside it.  The matrix must allow
// 16-byte loads: 16-byte aligned (8 for byte masks), cols % 8 == 0, and c % 8 == 0.
template <class T>
__device__ inline uint4 load_chunk(const T* p, int64_t rows, int64_t cols, int64_t r, int64_t c) {
  if (r >= rows || c >= cols) return make_uint4(0, 0, 0, 0);
  return __ldg(reinterpret_cast<const uint4*>(p + r * cols + c));
}

// What the mask data of a chunk is.  Kernels that know it at compile time keep only the
// registers it needs; `any` decides at run time from the MaskView.
enum class Source { any, none, bytes, bits, soft };

inline Source source_of(const MaskView& m) {
  if (m.mode == Mode::dense) return Source::none;
  if (m.soft) return Source::soft;
  return m.mode == Mode::bits ? Source::bits : Source::bytes;
}

// The mask data that covers chunk (r, c): 8 bytes (owner / binary mask), 8 soft-mask
// elements, or 8 bits in .x.  Outside the matrix it selects nothing.
template <class T, Source S = Source::any>
__device__ inline uint4 load_mask_chunk(const MaskView& m, int64_t rows, int64_t cols, int64_t r, int64_t c) {
  const bool none = S == Source::none || (S == Source::any && m.mode == Mode::dense);
  if (none || r >= rows || c >= cols) return make_uint4(0, 0, 0, 0);
  if (S == Source::soft || (S == Source::any && m.soft)) {
    return load_chunk(static_cast<const T*>(m.soft), rows, cols, r, c);
  }
  if (S == Source::bits || (S == Source::any && m.mode == Mode::bits)) {
    return make_uint4((__ldg(m.bits + r * m.bits_ld + c / 32) >> (c % 32)) & 0xFFu, 0, 0, 0);
  }
  const uint2 b = __ldg(reinterpret_cast<const uint2*>(m.bytes + r * cols + c));
  return make_uint4(b.x, b.y, 0, 0);
}

// Keeps the 16-bit elements whose byte in k0 (elements 0-3) / k1 (4-7) is 0xFF.
__device__ inline void keep_bytes(uint4& v, uint32_t k0, uint32_t k1) {
  v.x &= __byte_perm(k0, 0, 0x1100);
  v.y &= __byte_perm(k0, 0, 0x3322);
  v.z &= __byte_perm(k1, 0, 0x1100);
  v.w &= __byte_perm(k1, 0, 0x3322);
}

// Four bits -> four bytes of 0x00/0xFF (bit i -> byte i).
__device__ inline uint32_t spread_bits(uint32_t b) {
  return ((b & 0xFu) * 0x00204081u & 0x01010101u) * 0xFFu;
}

// 0xFF in each byte where the rule keeps an owner/mask byte.
__device__ inline uint32_t keep_of_bytes(Mode mode, uint32_t bytes, uint32_t task4) {
  if (mode == Mode::visible) return __vcmpltu4(__vsub4(bytes, 0x01010101u), task4);  // 0 < o <= t
  if (mode == Mode::trainable) return __vcmpeq4(bytes, task4);
  return __vcmpne4(bytes, 0u);  // binary mask
}

// Applies the mask data `raw` of a chunk to the chunk `v` for `task`.
template <class T, Source S = Source::any>
__device__ inline void apply_mask(uint4& v, const uint4& raw, const MaskView& m, uint32_t task) {
  if (S == Source::none || (S == Source::any && m.mode == Mode::dense)) return;
  if (S == Source::soft || (S == Source::any && m.soft)) {
    using T2 = typename Pair<T>::type;
    T2* e = reinterpret_cast<T2*>(&v);
    const T2* s = reinterpret_cast<const T2*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) e[i] = __hmul2(e[i], s[i]);
    return;
  }
  if (S == Source::bits || (S == Source::any && m.mode == Mode::bits)) {
    keep_bytes(v, spread_bits(raw.x), spread_bits(raw.x >> 4));
    return;
  }
  const uint32_t task4 = task * 0x01010101u;
  keep_bytes(v, keep_of_bytes(m.mode, raw.x, task4), keep_of_bytes(m.mode, raw.y, task4));
}

// Whether a binary rule (any mode but a soft mask) keeps element (r, c) for `task`.
__device__ inline bool element_kept(const MaskView& m, int64_t r, int64_t c, uint32_t task) {
  switch (m.mode) {
    case Mode::visible: return uint32_t(m.bytes[r * m.ld + c]) - 1u < task;  // 0 < o <= t
    case Mode::trainable: return uint32_t(m.bytes[r * m.ld + c]) == task;
    case Mode::mask: return m.bytes[r * m.ld + c] != 0;
    case Mode::bits: return (m.bits[r * m.bits_ld + c / 32] >> (c % 32)) & 1u;
    default: return true;
  }
}

// v masked by the rule at element (r, c): kept, exactly zero, or times the soft mask.
template <class T, class V>
__device__ inline V mask_element(const MaskView& m, int64_t r, int64_t c, uint32_t task, V v) {
  if (m.soft) return v * widen(static_cast<const T*>(m.soft)[r * m.ld + c]);
  return element_kept(m, r, c, task) ? v : V(0);
}

}  // namespace maskops::cuda
