// Launch code for the few-row forward (masked_gemv), instantiated once per dtype
// (gemv_forward_f16.cu, gemv_forward_bf16.cu) to keep each compile short.
#pragma once

#include "dispatch.cuh"
#include "masked_gemv.cuh"

namespace maskops::cuda {

constexpr int kGemvWarps = 8;

struct GemvPlan {
  int nt = 1;  // 8-row blocks of x
  int splits = 1;
};

// 16 weight rows per block (MT = 1: the most blocks, and two or more blocks per SM), and as
// many stages as fit in 163 KB (sm_80) for the widest x and mask.
constexpr int kGemvMT = 1;
template <int NT> constexpr int kGemvStages = NT <= 2 ? 4 : NT == 4 ? 3 : 2;

inline int gemv_nt(int64_t M) { return M <= 8 ? 1 : M <= 16 ? 2 : M <= 32 ? 4 : 8; }

inline GemvPlan gemv_plan(int64_t M, int64_t N, int64_t K) {
  GemvPlan g;
  g.nt = gemv_nt(M);
  g.splits = choose_splits(ceil_div(N, 16 * kGemvMT), K, 32 * kGemvWarps, 2);
  return g;
}

template <class T, Source S, int NT>
cudaError_t launch_gemv(const GemvParams<T>& p, int splits, cudaStream_t stream) {
  constexpr int MT = kGemvMT, STAGES = kGemvStages<NT>;
  dim3 grid(unsigned(ceil_div(p.N, 16 * MT)), unsigned(splits));
  const int bytes = GemvStage<T, S, MT, NT, kGemvWarps>::kBytes * STAGES;
  auto kernel = masked_gemv<T, S, MT, NT, kGemvWarps, STAGES>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err != cudaSuccess) return err;
  kernel<<<grid, kGemvWarps * 32, bytes, stream>>>(p);
  return cudaGetLastError();
}

template <class T, Source S>
cudaError_t launch_gemv(const GemvParams<T>& p, const GemvPlan& g, cudaStream_t stream) {
  switch (g.nt) {
    case 1: return launch_gemv<T, S, 1>(p, g.splits, stream);
    case 2: return launch_gemv<T, S, 2>(p, g.splits, stream);
    case 4: return launch_gemv<T, S, 4>(p, g.splits, stream);
    default: return launch_gemv<T, S, 8>(p, g.splits, stream);
  }
}

template <class T>
cudaError_t gemv_forward(const LinearForward& f, float* workspace, cudaStream_t stream) {
  const GemvPlan g = gemv_plan(f.M, f.N, f.K);
  GemvParams<T> p;
  p.M = f.M, p.N = f.N, p.K = f.K;
  p.x = static_cast<const T*>(f.x);
  p.w = static_cast<const T*>(f.w);
  p.vis = mask_view(f.vis, f.K);
  p.task = f.vis.task;
  p.row_task = f.vis.row_task;
  p.chunks_per_split = ceil_div(ceil_div(f.K, 32 * kGemvWarps), g.splits) * kGemvWarps;
  p.out = epilogue<T>(f.M, f.N, f.y, f.bias, f.out_mask, f.out_mask_per_row);
  if (g.splits > 1) p.out.partial = workspace;
  cudaError_t err;
  switch (source_of(p.vis)) {
    case Source::none: err = launch_gemv<T, Source::none>(p, g, stream); break;
    case Source::bits: err = launch_gemv<T, Source::bits>(p, g, stream); break;
    case Source::soft: err = launch_gemv<T, Source::soft>(p, g, stream); break;
    default: err = launch_gemv<T, Source::bytes>(p, g, stream); break;
  }
  if (err != cudaSuccess) return err;
  return finish_splits(p.out, g.splits, workspace, stream);
}

}  // namespace maskops::cuda
