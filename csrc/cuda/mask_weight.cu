// dst = src where the mask selects (a scratch copy of the effective weight, or a masked
// gradient), for the paths that hand the product to cuBLAS / cuDNN.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "launch.h"
#include "dispatch.cuh"

namespace maskops::cuda {
namespace {

template <class T> __device__ T product(T a, T b) { return a * b; }
template <> __device__ __half product(__half a, __half b) { return __hmul(a, b); }
template <> __device__ __nv_bfloat16 product(__nv_bfloat16 a, __nv_bfloat16 b) { return __hmul(a, b); }

// One element per thread: any dtype, and keep_others (select into dst).
template <class T>
__global__ void mask_elements(int64_t rows, int64_t cols, const T* src, MaskView m, uint32_t task,
                              T* dst, bool keep_others) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= rows * cols) return;
  if (m.soft) {
    dst[i] = product(src[i], static_cast<const T*>(m.soft)[i]);
  } else if (element_kept(m, i / cols, i % cols, task)) {
    dst[i] = src[i];
  } else if (!keep_others) {
    dst[i] = T{};
  }
}

// One 16-byte chunk per thread, for 16-bit types whose arrays allow 16-byte loads.
template <class T>
__global__ void mask_chunks(int64_t rows, int64_t cols, const T* src, MaskView m, uint32_t task, T* dst) {
  const int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (q >= rows * cols / 8) return;
  const int64_t r = q / (cols / 8), c = q % (cols / 8) * 8;
  uint4 v = load_chunk(src, rows, cols, r, c);
  apply_mask<T>(v, load_mask_chunk<T>(m, rows, cols, r, c), m, task);
  *reinterpret_cast<uint4*>(dst + r * cols + c) = v;
}

template <class T>
cudaError_t run(int64_t rows, int64_t cols, const void* src, const Vis& vis, void* dst, bool keep_others,
                cudaStream_t stream) {
  const MaskView m = mask_view(vis, cols);
  const int threads = 256;
  if constexpr (sizeof(T) == 2) {
    if (!keep_others && vectors_fit({cols}, {src, dst}, m)) {
      const int64_t chunks = rows * cols / 8;
      mask_chunks<T><<<(chunks + threads - 1) / threads, threads, 0, stream>>>(
          rows, cols, static_cast<const T*>(src), m, vis.task, static_cast<T*>(dst));
      return cudaGetLastError();
    }
  }
  const int64_t n = rows * cols;
  mask_elements<T><<<(n + threads - 1) / threads, threads, 0, stream>>>(
      rows, cols, static_cast<const T*>(src), m, vis.task, static_cast<T*>(dst), keep_others);
  return cudaGetLastError();
}

}  // namespace

cudaError_t mask_weight(DType dtype, int64_t rows, int64_t cols, const void* src, const Vis& vis, void* dst,
                        bool keep_others, cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  switch (dtype) {
    case DType::f16: return run<__half>(rows, cols, src, vis, dst, keep_others, stream);
    case DType::bf16: return run<__nv_bfloat16>(rows, cols, src, vis, dst, keep_others, stream);
    case DType::f32: return run<float>(rows, cols, src, vis, dst, keep_others, stream);
    case DType::f64: return run<double>(rows, cols, src, vis, dst, keep_others, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace maskops::cuda
