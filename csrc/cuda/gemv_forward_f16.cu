// The few-row forward for f16 (see gemv_forward.cuh).
#include "gemv_forward.cuh"

namespace maskops::cuda {

cudaError_t gemv_forward_f16(const LinearForward& f, float* workspace, cudaStream_t stream) {
  return gemv_forward<__half>(f, workspace, stream);
}

}  // namespace maskops::cuda
