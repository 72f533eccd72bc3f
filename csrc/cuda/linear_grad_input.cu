// Launch code for the input gradient of a linear layer: gx (M, K) = g (M, N) w_eff (N, K),
// the tiled kernel with B(k, n) = w[n][k] read MN-major.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "dispatch.cuh"

namespace maskops::cuda {
namespace {

template <class T>
cudaError_t run(const LinearGradInput& f, float* workspace, cudaStream_t stream) {
  GemmParams<T> p;
  p.M = f.M, p.N = f.K, p.K = f.N;
  p.a = static_cast<const T*>(f.grad);
  p.b = static_cast<const T*>(f.w);
  p.vis = mask_view(f.vis, f.K);
  p.task = f.vis.task;
  p.row_task = f.vis.row_task;
  p.out = epilogue<T>(f.M, f.K, f.grad_x);
  return gemm<T, true, false>(p, gemm_plan(f.M, f.K, f.N, true), workspace, stream);
}

}  // namespace

size_t linear_grad_input_workspace(const LinearGradInput& f) {
  return partial_bytes(gemm_plan(f.M, f.K, f.N, true).splits, f.M, f.K);
}

cudaError_t linear_grad_input(const LinearGradInput& f, void* workspace, cudaStream_t stream) {
  if (!half_type(f.dtype) || !vectors_fit({f.N, f.K}, {f.grad, f.w}, mask_view(f.vis, f.K))) {
    return cudaErrorNotSupported;
  }
  if (f.M == 0 || f.K == 0) return cudaSuccess;
  float* ws = static_cast<float*>(workspace);
  return f.dtype == DType::bf16 ? run<__nv_bfloat16>(f, ws, stream) : run<__half>(f, ws, stream);
}

}  // namespace maskops::cuda
