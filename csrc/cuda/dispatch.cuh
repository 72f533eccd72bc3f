// Host-side launch helpers shared by the linear kernels: alignment checks, the split of K
// that fills the GPU, tile-shape choice, and the launch of masked_gemm for one layout.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "launch.h"
#include "masked_chunk.cuh"
#include "masked_gemm.cuh"

namespace maskops::cuda {

inline int sm_count() {
  int device = 0, count = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return 108;  // only the split of K depends on it
  }
  return count;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Whether matrices with these row lengths and these arrays (and the mask) allow the 16-byte
// loads of load_chunk.
inline bool vectors_fit(std::initializer_list<int64_t> cols, std::initializer_list<const void*> arrays,
                        const MaskView& m) {
  for (int64_t c : cols) {
    if (c % 8) return false;
  }
  for (const void* a : arrays) {
    if (reinterpret_cast<uintptr_t>(a) % 16) return false;
  }
  return reinterpret_cast<uintptr_t>(m.bytes) % 8 == 0 && reinterpret_cast<uintptr_t>(m.soft) % 16 == 0;
}

// Splits of K (whole `step`-wide blocks, at least `min_steps` each) so that `blocks` times the
// splits keeps every SM busy.
inline int choose_splits(int64_t blocks, int64_t K, int step, int min_steps) {
  const int64_t sms = sm_count();
  if (blocks * 4 >= sms * 3) return 1;
  const int64_t by_k = std::max<int64_t>(1, ceil_div(K, step) / min_steps);
  return int(std::min<int64_t>({ceil_div(sms, blocks), by_k, 64}));
}

inline size_t partial_bytes(int splits, int64_t M, int64_t N) {
  return splits > 1 ? size_t(splits) * M * N * sizeof(float) : 0;
}

template <class T>
Epilogue<T> epilogue(int64_t M, int64_t N, void* y, const void* bias = nullptr, const void* out_mask = nullptr,
                     bool per_row = false) {
  Epilogue<T> e;
  e.M = M, e.N = N;
  e.y = static_cast<T*>(y);
  e.bias = static_cast<const T*>(bias);
  e.out_mask = static_cast<const T*>(out_mask);
  e.out_mask_per_row = per_row;
  return e;
}

// After a kernel that wrote split-K partial sums into `workspace`: add them up into y.
template <class T>
cudaError_t finish_splits(Epilogue<T> e, int splits, float* workspace, cudaStream_t stream) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || splits == 1) return err;
  e.partial = workspace;
  const int threads = 256;
  splitk_finish<T><<<unsigned(ceil_div(e.M * e.N, threads)), threads, 0, stream>>>(e, splits);
  return cudaGetLastError();
}

struct GemmPlan {
  bool large = true;  // 128x128 blocks of 8 warps, else 64x64 blocks of 4 warps
  int splits = 1;
  int64_t k_per_split = 0;
};

inline GemmPlan gemm_plan(int64_t M, int64_t N, int64_t K, bool may_split) {
  GemmPlan g;
  const int64_t large_blocks = ceil_div(M, 128) * ceil_div(N, 128);
  g.large = large_blocks >= sm_count();
  const int64_t blocks = g.large ? large_blocks : ceil_div(M, 64) * ceil_div(N, 64);
  g.splits = may_split ? choose_splits(blocks, K, kGemmBK, 8) : 1;
  g.k_per_split = std::max<int64_t>(1, ceil_div(ceil_div(K, g.splits), kGemmBK)) * kGemmBK;
  g.splits = int(std::max<int64_t>(1, ceil_div(K, g.k_per_split)));
  return g;
}

template <class T, bool AK, bool BK, int BM, int BN, int WM, int WN>
void launch_gemm(const GemmParams<T>& p, int splits, cudaStream_t stream) {
  dim3 grid(unsigned(ceil_div(p.M, BM)), unsigned(ceil_div(p.N, BN)), unsigned(splits));
  masked_gemm<T, BM, BN, WM, WN, AK, BK><<<grid, WM * WN * 32, 0, stream>>>(p);
}

// Runs masked_gemm with operand layouts AK / BK (true: K-major) under plan g.
template <class T, bool AK, bool BK>
cudaError_t gemm(GemmParams<T> p, const GemmPlan& g, float* workspace, cudaStream_t stream) {
  p.k_per_split = g.k_per_split;
  if (g.splits > 1) p.out.partial = workspace;
  if (g.large) {
    launch_gemm<T, AK, BK, 128, 128, 2, 4>(p, g.splits, stream);
  } else {
    launch_gemm<T, AK, BK, 64, 64, 2, 2>(p, g.splits, stream);
  }
  return finish_splits(p.out, g.splits, workspace, stream);
}

inline bool half_type(DType d) { return d == DType::f16 || d == DType::bf16; }

// Few-row forward (gemv_forward_*.cu).
constexpr int kGemvMaxRows = 64;
cudaError_t gemv_forward_f16(const LinearForward& f, float* workspace, cudaStream_t stream);
cudaError_t gemv_forward_bf16(const LinearForward& f, float* workspace, cudaStream_t stream);

}  // namespace maskops::cuda
