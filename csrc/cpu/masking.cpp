#include "masking.h"

#include <algorithm>
#include <vector>

#include "fused_isa.h"
#include "parallel.h"
#include "scratch.h"

namespace maskops::cpu {

namespace {

// Rows of a 2-D block, each a vectorizable loop over columns with the rule fixed.
template <class T, class RowFn>
void for_rows(const Vis<T>& v, int64_t ldv, int64_t rows, RowFn&& row) {
  for (int64_t r = 0; r < rows; ++r) row(v.at(r * ldv), r);
}

// Work split for the whole-array versions: chunks large enough to amortize a thread.
constexpr int64_t kArrayChunk = 1 << 15;

}  // namespace

template <class T>
bool mask_block(const T* w, int64_t ldw, const Vis<T>& v, int64_t ldv, unsigned task,
                int64_t rows, int64_t cols, T* out, int64_t ldo) {
  MASKOPS_CALL_FUSED(mask_block, w, ldw, v, ldv, task, rows, cols, out, ldo)
}

template <class T>
bool any_selected(const Vis<T>& v, int64_t ldv, unsigned task, int64_t rows, int64_t cols) {
  return with_rule(v, [&](auto rule) {
    constexpr Rule R = decltype(rule)::value;
    if constexpr (R == Rule::dense) {
      return rows > 0 && cols > 0;
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        const Vis<T> vr = v.at(r * ldv);
        int hit = 0;
        for (int64_t c = 0; c < cols; ++c) hit |= effective<R>(vr, c, T(1), task) != T(0);
        if (hit) return true;
      }
      return false;
    }
  });
}

template <class T>
void mask_in_place(T* a, int64_t lda, const Vis<T>& v, int64_t ldv, unsigned task,
                   int64_t rows, int64_t cols) {
  with_rule(v, [&](auto rule) {
    constexpr Rule R = decltype(rule)::value;
    if constexpr (R != Rule::dense) {
      for_rows(v, ldv, rows, [&](const Vis<T>& vr, int64_t r) {
        T* ar = a + r * lda;
        for (int64_t c = 0; c < cols; ++c) ar[c] = effective<R>(vr, c, ar[c], task);
      });
    }
  });
}

template <class T>
void add_masked(const T* src, int64_t lds, const Vis<T>& v, int64_t ldv, unsigned task,
                int64_t rows, int64_t cols, T* dst, int64_t ldd) {
  with_rule(v, [&](auto rule) {
    constexpr Rule R = decltype(rule)::value;
    for_rows(v, ldv, rows, [&](const Vis<T>& vr, int64_t r) {
      const T* s = src + r * lds;
      T* d = dst + r * ldd;
      for (int64_t c = 0; c < cols; ++c) d[c] += effective<R>(vr, c, s[c], task);
    });
  });
}

template <class T>
bool mask_array(const T* w, const Vis<T>& v, unsigned task, int64_t count, T* out) {
  const int64_t chunks = (count + kArrayChunk - 1) / kArrayChunk;
  std::vector<char> any(chunks, 0);
  parallel_for(chunks, max_threads(), Schedule::even, [&](int64_t i) {
    const int64_t begin = i * kArrayChunk, size = std::min(kArrayChunk, count - begin);
    any[i] = mask_block(w + begin, size, v.at(begin), size, task, 1, size, out + begin, size);
  });
  return std::find(any.begin(), any.end(), 1) != any.end();
}

template <class T>
void add_masked_array(const T* src, const Vis<T>& v, unsigned task, int64_t count, T* dst) {
  const int64_t chunks = (count + kArrayChunk - 1) / kArrayChunk;
  parallel_for(chunks, max_threads(), Schedule::even, [&](int64_t i) {
    const int64_t begin = i * kArrayChunk, size = std::min(kArrayChunk, count - begin);
    add_masked(src + begin, size, v.at(begin), size, task, 1, size, dst + begin, size);
  });
}

template <class T>
bool mask_array_channels_last(const T* w, const Vis<T>& v, unsigned task, int64_t out_channels,
                              int64_t in_channels, int64_t taps, T* out) {
  const int64_t per_channel = in_channels * taps;
  std::vector<char> any(out_channels, 0);
  parallel_for(out_channels, threads_for(out_channels * per_channel), Schedule::even, [&](int64_t o) {
    T* masked = thread_scratch<T>(per_channel);
    const int64_t begin = o * per_channel;
    any[o] = mask_block(w + begin, per_channel, v.at(begin), per_channel, task, 1, per_channel,
                        masked, per_channel);
    T* dst = out + begin;
    // Rows of dst written whole; the strided reads stay in this thread's cache.
    for (int64_t k = 0; k < taps; ++k)
      for (int64_t i = 0; i < in_channels; ++i) dst[k * in_channels + i] = masked[i * taps + k];
  });
  return std::find(any.begin(), any.end(), 1) != any.end();
}

#define MASKOPS_INSTANTIATE(T)                                                               \
  template bool mask_block<T>(const T*, int64_t, const Vis<T>&, int64_t, unsigned, int64_t,  \
                              int64_t, T*, int64_t);                                         \
  template bool any_selected<T>(const Vis<T>&, int64_t, unsigned, int64_t, int64_t);        \
  template void mask_in_place<T>(T*, int64_t, const Vis<T>&, int64_t, unsigned, int64_t,    \
                                 int64_t);                                                   \
  template void add_masked<T>(const T*, int64_t, const Vis<T>&, int64_t, unsigned, int64_t, \
                              int64_t, T*, int64_t);                                         \
  template bool mask_array<T>(const T*, const Vis<T>&, unsigned, int64_t, T*);              \
  template void add_masked_array<T>(const T*, const Vis<T>&, unsigned, int64_t, T*);         \
  template bool mask_array_channels_last<T>(const T*, const Vis<T>&, unsigned, int64_t,     \
                                            int64_t, int64_t, T*);
MASKOPS_INSTANTIATE(float)
MASKOPS_INSTANTIATE(double)
#undef MASKOPS_INSTANTIATE
template bool mask_block<bf16>(const bf16*, int64_t, const Vis<bf16>&, int64_t, unsigned, int64_t,
                               int64_t, bf16*, int64_t);
template bool mask_array<bf16>(const bf16*, const Vis<bf16>&, unsigned, int64_t, bf16*);
template bool mask_array_channels_last<bf16>(const bf16*, const Vis<bf16>&, unsigned, int64_t,
                                             int64_t, int64_t, bf16*);
template bool mask_block<f16>(const f16*, int64_t, const Vis<f16>&, int64_t, unsigned, int64_t,
                              int64_t, f16*, int64_t);
template bool mask_array<f16>(const f16*, const Vis<f16>&, unsigned, int64_t, f16*);
template bool mask_array_channels_last<f16>(const f16*, const Vis<f16>&, unsigned, int64_t,
                                            int64_t, int64_t, f16*);

}  // namespace maskops::cpu
