// The torch-free C++ API of the CUDA kernels: raw device pointers, sizes and a stream.
//
// Every array is dense and row-major (the last dimension contiguous).  A linear layer is
// x (M, K), weight (N, K), y (M, N).  Functions return the first CUDA error they meet.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "../modes.h"

namespace maskops::cuda {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2, f64 = 3 };

// The modes of csrc/modes.h; `bits` is the packed per-task visible map (int32 words).
using Mode = ::maskops::Mode;

// Which weights take part.  The mask arrays have the weight's shape and layout.
// Unselected weights are exactly zero (a select, not a multiply), except for soft masks.
struct Vis {
  Mode mode = Mode::dense;
  const uint8_t* owner = nullptr;     // visible / trainable
  const void* mask = nullptr;         // mask mode
  bool soft = false;                  // mask is floating (weight's dtype), else uint8 0/1
  const uint32_t* bits = nullptr;     // bits mode: (rows, ceil(cols / 32)) words
  int task = 1;                       // used when row_task is null
  const int32_t* row_task = nullptr;  // one task per row of x (linear) / image (conv)

  bool per_task() const { return mode == Mode::visible || mode == Mode::trainable; }
};

// y (M, N) = x (M, K) @ w_eff (N, K)^T + bias (N), times out_mask (N) or (M, N).
struct LinearForward {
  DType dtype = DType::bf16;
  int64_t M = 0, N = 0, K = 0;
  const void* x = nullptr;
  const void* w = nullptr;
  Vis vis;
  const void* bias = nullptr;      // or null
  const void* out_mask = nullptr;  // or null; dtype of x
  bool out_mask_per_row = false;   // (M, N) rather than (N)
  void* y = nullptr;
};

// grad_x (M, K) = grad (M, N) @ w_eff (N, K).
struct LinearGradInput {
  DType dtype = DType::bf16;
  int64_t M = 0, N = 0, K = 0;
  const void* grad = nullptr;
  const void* w = nullptr;
  Vis vis;
  void* grad_x = nullptr;
};

// grad_w (N, K) = grad (M, N)^T @ x (M, K), kept where `vis` selects.  With row_task, row i
// contributes only where owner == row_task[i] (mode trainable).
struct LinearGradWeight {
  DType dtype = DType::bf16;
  int64_t M = 0, N = 0, K = 0;
  const void* grad = nullptr;
  const void* x = nullptr;
  Vis vis;
  void* grad_w = nullptr;
};

// Kernels for float16 / bfloat16 on tensor cores (sm_80+).  `workspace` must hold the bytes
// the matching *_workspace function returns (split-K partial sums; 0 bytes is common).
// They return cudaErrorNotSupported, and launch nothing, for other dtypes and where rows are
// not a multiple of 8 elements or arrays not 16-byte aligned (8 for byte masks): callers
// then take the mask_weight + BLAS path.  Bits are a forward-only format.
size_t linear_forward_workspace(const LinearForward& p);
cudaError_t linear_forward(const LinearForward& p, void* workspace, cudaStream_t stream);
size_t linear_grad_input_workspace(const LinearGradInput& p);
cudaError_t linear_grad_input(const LinearGradInput& p, void* workspace, cudaStream_t stream);
cudaError_t linear_grad_weight(const LinearGradWeight& p, cudaStream_t stream);

// dst (rows, cols) = src where `vis` (row_task ignored) selects; elsewhere 0, or the old
// dst value when keep_others.  Any dtype.  dst may equal src.
cudaError_t mask_weight(DType dtype, int64_t rows, int64_t cols, const void* src, const Vis& vis,
                        void* dst, bool keep_others, cudaStream_t stream);

}  // namespace maskops::cuda
