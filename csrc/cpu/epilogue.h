// What is applied to a linear output after the product: + bias, then * out_mask.
#pragma once

#include <cstdint>

namespace maskops::cpu {

// y * m, exactly 0 where m is 0 (a switched-off unit stays off even where y is NaN or inf).
template <class T>
inline T masked_output(T y, T m) {
  return m == T(0) ? T(0) : y * m;
}

template <class T>
struct Epilogue {
  const T* bias = nullptr;          // (N,) or null
  const T* out_mask = nullptr;      // (N,) or (rows, N) or null
  int64_t out_mask_row_stride = 0;  // 0 for (N,), N for (rows, N)

  bool active() const { return bias != nullptr || out_mask != nullptr; }

  // y[c0 .. c0+cols) of original output row `row`, in place.
  void apply(T* y, int64_t row, int64_t c0, int64_t cols) const {
    if (bias) {
      const T* b = bias + c0;
      for (int64_t c = 0; c < cols; ++c) y[c] += b[c];
    }
    if (out_mask) {
      const T* m = out_mask + row * out_mask_row_stride + c0;
      for (int64_t c = 0; c < cols; ++c) y[c] = masked_output(y[c], m[c]);
    }
  }
};

// y[b, c, p] *= out_mask[b * mask_stride + c] for a (B, C, P) output addressed by strides
// (NCHW or channels-last alike); mask_stride is 0 for a (C,) mask, C for (B, C).
template <class T>
void scale_channels(T* y, int64_t batch, int64_t channels, int64_t pixels, int64_t stride_b,
                    int64_t stride_c, int64_t stride_p, const T* out_mask, int64_t mask_stride);

}  // namespace maskops::cpu
