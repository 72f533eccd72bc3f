// Launch code for the linear forward: few rows stream the weight (gemv_forward.cuh), more
// rows run the tiled kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gemv_forward.cuh"

namespace maskops::cuda {
namespace {

template <class T>
cudaError_t tiled(const LinearForward& f, float* workspace, cudaStream_t stream) {
  GemmParams<T> p;
  p.M = f.M, p.N = f.N, p.K = f.K;
  p.a = static_cast<const T*>(f.x);
  p.b = static_cast<const T*>(f.w);
  p.vis = mask_view(f.vis, f.K);
  p.task = f.vis.task;
  p.row_task = f.vis.row_task;
  p.out = epilogue<T>(f.M, f.N, f.y, f.bias, f.out_mask, f.out_mask_per_row);
  return gemm<T, true, true>(p, gemm_plan(f.M, f.N, f.K, true), workspace, stream);
}

}  // namespace

size_t linear_forward_workspace(const LinearForward& f) {
  if (f.M <= kGemvMaxRows) return partial_bytes(gemv_plan(f.M, f.N, f.K).splits, f.M, f.N);
  return partial_bytes(gemm_plan(f.M, f.N, f.K, true).splits, f.M, f.N);
}

cudaError_t linear_forward(const LinearForward& f, void* workspace, cudaStream_t stream) {
  if (!half_type(f.dtype) || !vectors_fit({f.K}, {f.x, f.w}, mask_view(f.vis, f.K))) {
    return cudaErrorNotSupported;
  }
  if (f.M == 0 || f.N == 0) return cudaSuccess;
  float* ws = static_cast<float*>(workspace);
  if (f.M <= kGemvMaxRows) {
    return f.dtype == DType::bf16 ? gemv_forward_bf16(f, ws, stream) : gemv_forward_f16(f, ws, stream);
  }
  return f.dtype == DType::bf16 ? tiled<__nv_bfloat16>(f, ws, stream) : tiled<__half>(f, ws, stream);
}

}  // namespace maskops::cuda
