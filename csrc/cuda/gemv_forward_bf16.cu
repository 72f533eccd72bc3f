// The few-row forward for bf16 (see gemv_forward.cuh).
#include "gemv_forward.cuh"

namespace maskops::cuda {

cudaError_t gemv_forward_bf16(const LinearForward& f, float* workspace, cudaStream_t stream) {
  return gemv_forward<__nv_bfloat16>(f, workspace, stream);
}

}  // namespace maskops::cuda
