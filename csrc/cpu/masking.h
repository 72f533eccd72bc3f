// Block operations that apply a weight selection (see vis.h) while data passes through.
//
// Every function works on a rows x cols block.  `v` is already shifted to the block's
// first element (Vis::at) and its arrays have leading dimension `ldv` (the weight's).
// Serial: callers run them inside their own parallel loops.
#pragma once

#include <cstdint>

#include "vis.h"

namespace maskops::cpu {

// out = w_eff of the block.  Returns false only if every effective weight is zero, so the
// caller can skip the product with it.
template <class T>
bool mask_block(const T* w, int64_t ldw, const Vis<T>& v, int64_t ldv, unsigned task,
                int64_t rows, int64_t cols, T* out, int64_t ldo);

// Whether the block has any selected weight for `task` (dense: always).
template <class T>
bool any_selected(const Vis<T>& v, int64_t ldv, unsigned task, int64_t rows, int64_t cols);

// a = a restricted to the selection (binary rules write exact zeros).
template <class T>
void mask_in_place(T* a, int64_t lda, const Vis<T>& v, int64_t ldv, unsigned task,
                   int64_t rows, int64_t cols);

// dst += src restricted to the selection.
template <class T>
void add_masked(const T* src, int64_t lds, const Vis<T>& v, int64_t ldv, unsigned task,
                int64_t rows, int64_t cols, T* dst, int64_t ldd);

// Whole-array versions (count elements, parallel), for small weights such as conv kernels.
// mask_block and mask_array also take 16-bit weights (the others: float and double).
template <class T>
bool mask_array(const T* w, const Vis<T>& v, unsigned task, int64_t count, T* out);
template <class T>
void add_masked_array(const T* src, const Vis<T>& v, unsigned task, int64_t count, T* dst);

// mask_array for a conv weight (out, in, taps) written in the channels_last layout
// (out, taps, in): each output channel is masked in cache, then transposed.
template <class T>
bool mask_array_channels_last(const T* w, const Vis<T>& v, unsigned task, int64_t out_channels,
                              int64_t in_channels, int64_t taps, T* out);

}  // namespace maskops::cpu
