// Launch code for the weight gradient of a linear layer: gw (N, K) = g (M, N)^T x (M, K),
// kept where `vis` selects, the tiled kernel with both operands read MN-major.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "dispatch.cuh"

namespace maskops::cuda {
namespace {

template <class T>
cudaError_t run(const LinearGradWeight& f, cudaStream_t stream) {
  GemmParams<T> p;
  p.M = f.N, p.N = f.K, p.K = f.M;
  p.a = static_cast<const T*>(f.grad);
  p.b = static_cast<const T*>(f.x);
  p.vis = mask_view(f.vis, f.K);
  p.task = f.vis.task;
  p.row_task = f.vis.row_task;
  p.out = epilogue<T>(f.N, f.K, f.grad_w);
  return gemm<T, false, false>(p, gemm_plan(f.N, f.K, f.M, false), nullptr, stream);
}

}  // namespace

cudaError_t linear_grad_weight(const LinearGradWeight& f, cudaStream_t stream) {
  // Row tasks select disjoint weights only under `trainable` (owner == task); the bit map
  // is a forward format.
  if (!half_type(f.dtype) || !vectors_fit({f.N, f.K}, {f.grad, f.x}, MaskView{}) ||
      f.vis.mode == Mode::bits || (f.vis.row_task && f.vis.mode == Mode::visible)) {
    return cudaErrorNotSupported;
  }
  if (f.N == 0 || f.K == 0) return cudaSuccess;
  return f.dtype == DType::bf16 ? run<__nv_bfloat16>(f, stream) : run<__half>(f, stream);
}

}  // namespace maskops::cuda
