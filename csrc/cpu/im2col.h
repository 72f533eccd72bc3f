// The columns of an implicit-GEMM convolution: row (c, i, j) of the (C * kh * kw, OH * OW)
// result holds input channel c shifted by kernel tap (i, j) at every output pixel.
#pragma once

#include <cstdint>

namespace maskops::cpu {

struct ConvShape {
  int64_t channels, height, width;  // input (one image, NCHW)
  int64_t kh, kw;
  int64_t stride[2], padding[2], dilation[2];
  int64_t out_height() const { return (height + 2 * padding[0] - dilation[0] * (kh - 1) - 1) / stride[0] + 1; }
  int64_t out_width() const { return (width + 2 * padding[1] - dilation[1] * (kw - 1) - 1) / stride[1] + 1; }
};

// columns[r, :] for the rows r with needed[r] != 0 (all rows when needed is null); other rows
// are left as they are.  x is one contiguous NCHW image.
template <class T>
void im2col(const T* x, const ConvShape& s, const uint8_t* needed, T* columns);

}  // namespace maskops::cpu
