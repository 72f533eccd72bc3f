#include "im2col.h"

#include <algorithm>
#include <cstring>

#include "parallel.h"

namespace maskops::cpu {

template <class T>
void im2col(const T* x, const ConvShape& s, const uint8_t* needed, T* columns) {
  const int64_t oh = s.out_height(), ow = s.out_width(), pixels = oh * ow;
  const int64_t rows = s.channels * s.kh * s.kw;
  parallel_for(rows, threads_above(rows * pixels, 1 << 18), Schedule::even, [&](int64_t r) {
    if (needed && !needed[r]) return;
    const int64_t c = r / (s.kh * s.kw), i = r / s.kw % s.kh, j = r % s.kw;
    const T* plane = x + c * s.height * s.width;
    T* out = columns + r * pixels;
    // Output columns whose input column is inside the image: [x_begin, x_end).
    const int64_t shift = j * s.dilation[1] - s.padding[1];
    const int64_t x_begin = std::min(ow, std::max<int64_t>(0, (-shift + s.stride[1] - 1) / s.stride[1]));
    const int64_t x_end = std::max(x_begin, std::min(ow, (s.width - shift + s.stride[1] - 1) / s.stride[1]));
    for (int64_t y = 0; y < oh; ++y) {
      T* line = out + y * ow;
      const int64_t iy = y * s.stride[0] - s.padding[0] + i * s.dilation[0];
      if (iy < 0 || iy >= s.height) {
        std::memset(line, 0, sizeof(T) * ow);
        continue;
      }
      const T* src = plane + iy * s.width + shift;
      std::fill(line, line + x_begin, T(0));
      if (s.stride[1] == 1) {
        std::memcpy(line + x_begin, src + x_begin, sizeof(T) * (x_end - x_begin));
      } else {
        for (int64_t o = x_begin; o < x_end; ++o) line[o] = src[o * s.stride[1]];
      }
      std::fill(line + x_end, line + ow, T(0));
    }
  });
}

template void im2col<float>(const float*, const ConvShape&, const uint8_t*, float*);
template void im2col<double>(const double*, const ConvShape&, const uint8_t*, double*);

}  // namespace maskops::cpu
