// Masked linear layers on the CPU: forward, input gradient and weight gradient.
//
// All arrays are contiguous row-major: x (M, K), weight (N, K), y/grad (M, N).  The
// selection `vis` (vis.h) is applied to weight panels on load, with the task of each group
// of rows (task_groups.h: one call handles every task).  Dense products go through `gemm`.
#pragma once

#include <cstdint>

#include "blocks.h"
#include "epilogue.h"
#include "gemm.h"
#include "task_groups.h"
#include "vis.h"

namespace maskops::cpu {

// y = x w_eff^T, then bias and out_mask.  With `blocks` (visible mode), groups of few rows
// visit only the blocks their task can see (blocks.h).
template <class T>
void linear_forward(const T* x, int64_t M, int64_t K, const T* w, int64_t N, const Vis<T>& vis,
                    const TaskGroups& groups, const BlockMaps* blocks, const Epilogue<T>& epilogue,
                    T* y, Gemm<T> gemm);

// Whether every group runs the fused few-row kernels (linear_forward_fused can run them).
bool all_fused(const TaskGroups& groups);

// linear_forward for 16-bit weights (bf16, f16; and selection) with x and y in fp32, when
// all_fused.
template <class W>
void linear_forward_fused(const float* x, int64_t M, int64_t K, const W* w, int64_t N,
                          const Vis<W>& vis, const TaskGroups& groups, const BlockMaps* blocks,
                          const Epilogue<float>& epilogue, float* y);

// gx (M, K) = grad (M, N) w_eff.
template <class T>
void linear_grad_input(const T* grad, int64_t M, int64_t N, const T* w, int64_t K,
                       const Vis<T>& vis, const TaskGroups& groups, T* gx, Gemm<T> gemm);

// gw (N, K) = sum over rows i of outer(grad_i, x_i) restricted to row i's selection.
// Exact zeros outside it; blocks without a selected weight are never multiplied.
template <class T>
void linear_grad_weight(const T* grad, int64_t M, int64_t N, const T* x, int64_t K,
                        const Vis<T>& vis, const TaskGroups& groups, T* gw, Gemm<T> gemm);

}  // namespace maskops::cpu
