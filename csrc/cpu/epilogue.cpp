#include "epilogue.h"

#include "parallel.h"

namespace maskops::cpu {

template <class T>
void scale_channels(T* y, int64_t batch, int64_t channels, int64_t pixels, int64_t stride_b,
                    int64_t stride_c, int64_t stride_p, const T* out_mask, int64_t mask_stride) {
  if (stride_c == 1) {  // channels last: channels are the contiguous inner loop
    parallel_for(batch * pixels, threads_above(batch * pixels * channels, 1 << 16),
                 Schedule::even, [&](int64_t i) {
                   const int64_t b = i / pixels, p = i % pixels;
                   T* yp = y + b * stride_b + p * stride_p;
                   const T* m = out_mask + b * mask_stride;
                   for (int64_t c = 0; c < channels; ++c) yp[c] = masked_output(yp[c], m[c]);
                 });
    return;
  }
  parallel_for(batch * channels, threads_above(batch * pixels * channels, 1 << 16),
               Schedule::even, [&](int64_t i) {
                 const int64_t b = i / channels, c = i % channels;
                 T* yc = y + b * stride_b + c * stride_c;
                 const T m = out_mask[b * mask_stride + c];
                 for (int64_t p = 0; p < pixels; ++p)
                   yc[p * stride_p] = masked_output(yc[p * stride_p], m);
               });
}

template void scale_channels<float>(float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                    const float*, int64_t);
template void scale_channels<double>(double*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                     int64_t, const double*, int64_t);

}  // namespace maskops::cpu
