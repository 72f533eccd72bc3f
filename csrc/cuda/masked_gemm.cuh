// Tiled masked GEMM on tensor cores (mma.sync m16n8k16, fp32 accumulators), sm_80+.
//
//   C (M, N) = sum_{r < K} A(m, r) B(n, r)
//
// Each operand is dense and read in its own layout: "K-major" (A(m, r) = a[m * K + r]) or
// "MN-major" (A(m, r) = a[r * M + m]); shared-memory tiles keep that layout and ldmatrix
// (.trans for MN-major) makes the mma fragments.  One kernel thus serves
//   forward      y  = x w_eff^T     A = x (K-major),      B = w (K-major)
//   grad_input   gx = g w_eff       A = g (K-major),      B = w (MN-major)
//   grad_weight  gw = (g^T x) keep  A = g (MN-major),     B = x (MN-major)
//
// Masks are applied on the way from global memory to shared memory, in registers: tiles are
// loaded into registers one step ahead (a register-staged double buffer), the weight chunk
// is ANDed with its mask there, then stored.  Masking is independent of the layout because
// the mask has the weight's layout (see masked_chunk.cuh).
//
// Operands must allow 16-byte loads (see load_chunk); the launch code checks.
//
// Tasks.  With row_task, a block makes one pass over K per task present among its rows; a
// pass loads only the A rows of that task (others read as zero) and masks B for that task,
// so one launch serves a batch that mixes tasks.  For forward / grad_input the rows are the
// output rows; for grad_weight they are the reduction rows, and each pass stores only the
// outputs owned by its task (they are disjoint).  Weight-gradient tiles owning no weight of
// the task are not computed: they are written as zeros.
#pragma once

#include <cstdint>

#include "epilogue.cuh"
#include "masked_chunk.cuh"
#include "mma.cuh"
#include "task_set.cuh"

namespace maskops::cuda {

constexpr int kGemmBK = 32;

template <class T>
struct GemmParams {
  int64_t M = 0, N = 0, K = 0;
  const T* a = nullptr;
  const T* b = nullptr;
  MaskView vis;  // forward / grad_input: on B, in B's layout; grad_weight: on C (M, N)
  uint32_t task = 1;
  const int32_t* row_task = nullptr;  // per A row m (K-major A) or per reduction row r
  int64_t k_per_split = 0;            // multiple of kGemmBK; blockIdx.z picks the range
  Epilogue<T> out;
};

// A BK-deep tile of ROWS operand rows in shared memory, in the operand's global layout:
// K-major [ROWS][BK + 8] or MN-major [BK][ROWS + 8].  The pad puts the 8 rows that one
// ldmatrix reads in 8 different 16-byte bank groups.
template <int ROWS, bool KMAJOR, int THREADS>
struct Tile {
  static constexpr int kOuter = KMAJOR ? ROWS : kGemmBK;
  static constexpr int kInner = KMAJOR ? kGemmBK : ROWS;
  static constexpr int kPitch = kInner + 8;
  static constexpr int kSize = kOuter * kPitch;
  static constexpr int kChunks = kOuter * kInner / 8 / THREADS;  // per thread
  static_assert(kOuter * kInner / 8 % THREADS == 0, "tile does not split evenly over threads");

  // This thread's chunk i: offsets along the outer and inner dimension of the tile.
  __device__ static int outer(int i) { return (threadIdx.x + i * THREADS) / (kInner / 8); }
  __device__ static int inner(int i) { return (threadIdx.x + i * THREADS) % (kInner / 8) * 8; }
  // Its global (row, col) for a tile at operand row `row0` and reduction index `k0`.
  __device__ static int64_t row(int i, int64_t row0, int64_t k0) { return (KMAJOR ? row0 : k0) + outer(i); }
  __device__ static int64_t col(int i, int64_t row0, int64_t k0) { return (KMAJOR ? k0 : row0) + inner(i); }
  __device__ static uint4* at(void* s, int i) {
    return reinterpret_cast<uint4*>(static_cast<uint16_t*>(s) + outer(i) * kPitch + inner(i));
  }

  // The A fragment of the 16x16 block at operand row `m`, reduction offset `k`.
  __device__ static void load_a(uint32_t (&f)[4], const void* s, int m, int k, int lane) {
    const uint16_t* p = static_cast<const uint16_t*>(s);
    if constexpr (KMAJOR) {
      ldmatrix_x4(f, p + (m + lane % 16) * kPitch + k + lane / 16 * 8);
    } else {
      ldmatrix_x4_trans(f, p + (k + lane % 8 + lane / 16 * 8) * kPitch + m + lane / 8 % 2 * 8);
    }
  }
  // B fragments of the two 8-row blocks at operand rows n and n + 8: f[0..1], f[2..3].
  __device__ static void load_b(uint32_t (&f)[4], const void* s, int n, int k, int lane) {
    const uint16_t* p = static_cast<const uint16_t*>(s);
    if constexpr (KMAJOR) {
      ldmatrix_x4(f, p + (n + lane % 8 + lane / 16 * 8) * kPitch + k + lane / 8 % 2 * 8);
    } else {
      ldmatrix_x4_trans(f, p + (k + lane % 8 + lane / 8 % 2 * 8) * kPitch + n + lane / 16 * 8);
    }
  }
};

template <class T, int BM, int BN, int WM, int WN, bool A_KMAJOR, bool B_KMAJOR>
__global__ void __launch_bounds__(WM * WN * 32) masked_gemm(GemmParams<T> p) {
  // Only the weight gradient reads A MN-major; it masks C and has tasks per reduction row.
  constexpr bool kWeightGrad = !A_KMAJOR;
  constexpr int THREADS = WM * WN * 32, BK = kGemmBK;
  constexpr int MT = BM / WM / 16, NT = BN / WN / 8;  // mma tiles per warp
  static_assert(NT % 2 == 0, "B fragments load in pairs of 8-row blocks");
  using TA = Tile<BM, A_KMAJOR, THREADS>;
  using TB = Tile<BN, B_KMAJOR, THREADS>;
  __shared__ alignas(16) uint16_t sa[2][TA::kSize];
  __shared__ alignas(16) uint16_t sb[2][TB::kSize];
  __shared__ uint32_t row_set[kTaskWords], tile_set[kTaskWords], passes[kTaskWords];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int wm = warp / WN * (BM / WM), wn = warp % WN * (BN / WN);
  const int64_t m0 = int64_t(blockIdx.x) * BM, n0 = int64_t(blockIdx.y) * BN;
  const int64_t kb = blockIdx.z * p.k_per_split, ke = min(p.K, kb + p.k_per_split);
  const int64_t a_rows = A_KMAJOR ? p.M : p.K, a_cols = A_KMAJOR ? p.K : p.M;
  const int64_t b_rows = B_KMAJOR ? p.N : p.K, b_cols = B_KMAJOR ? p.K : p.N;

  // Which tasks to make passes for.
  const bool task_rows = p.row_task && p.vis.per_task();
  if (task_rows) {
    collect_tasks(row_set, p.row_task, kWeightGrad ? 0 : m0, kWeightGrad ? p.K : min(p.M, m0 + BM));
  }
  const bool skip_tiles = kWeightGrad && p.vis.mode == Mode::trainable;
  if (skip_tiles) {
    if (threadIdx.x < kTaskWords) tile_set[threadIdx.x] = 0;
    __syncthreads();
    for (int e = threadIdx.x; e < BM * BN; e += THREADS) {
      const int64_t m = m0 + e / BN, n = n0 + e % BN;
      if (m < p.M && n < p.N) add_task(tile_set, p.vis.bytes[m * p.N + n]);
    }
    __syncthreads();
  }
  if (threadIdx.x < kTaskWords) {
    const int w = threadIdx.x;
    uint32_t s = task_rows ? row_set[w] : (p.task / 32 == uint32_t(w) ? 1u << (p.task % 32) : 0u);
    passes[w] = skip_tiles ? s & tile_set[w] : s;
  }
  __syncthreads();

  uint32_t a_row_task[TA::kChunks];  // forward / grad_input: the task of each loaded row is fixed
#pragma unroll
  for (int i = 0; i < TA::kChunks; ++i) {
    const int64_t r = TA::row(i, m0, 0);
    a_row_task[i] = !kWeightGrad && task_rows && r < p.M ? uint32_t(p.row_task[r]) : 0u;
  }

  float acc[MT][NT][4];
  uint4 ra[TA::kChunks], rb[TB::kChunks], rm[TB::kChunks];

  auto load = [&](int64_t k0, uint32_t task) {
#pragma unroll
    for (int i = 0; i < TA::kChunks; ++i) {
      const int64_t r = TA::row(i, m0, k0), c = TA::col(i, m0, k0);
      bool take = true;
      if (task_rows) take = (kWeightGrad ? (r < p.K ? uint32_t(p.row_task[r]) : 0u) : a_row_task[i]) == task;
      ra[i] = take ? load_chunk(p.a, a_rows, a_cols, r, c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int i = 0; i < TB::kChunks; ++i) {
      const int64_t r = TB::row(i, n0, k0), c = TB::col(i, n0, k0);
      rb[i] = load_chunk(p.b, b_rows, b_cols, r, c);
      if constexpr (!kWeightGrad) rm[i] = load_mask_chunk<T>(p.vis, b_rows, b_cols, r, c);
    }
  };
  auto stash = [&](int buf, uint32_t task) {
#pragma unroll
    for (int i = 0; i < TA::kChunks; ++i) *TA::at(sa[buf], i) = ra[i];
#pragma unroll
    for (int i = 0; i < TB::kChunks; ++i) {
      if constexpr (!kWeightGrad) apply_mask<T>(rb[i], rm[i], p.vis, task);
      *TB::at(sb[buf], i) = rb[i];
    }
  };
  auto compute = [&](int buf) {
#pragma unroll
    for (int k = 0; k < BK; k += 16) {
      uint32_t af[MT][4], bf[NT][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) TA::load_a(af[mt], sa[buf], wm + 16 * mt, k, lane);
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t f[4];
        TB::load_b(f, sb[buf], wn + 16 * np, k, lane);
        bf[2 * np][0] = f[0], bf[2 * np][1] = f[1], bf[2 * np + 1][0] = f[2], bf[2 * np + 1][1] = f[3];
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma_16816<T>(acc[mt][nt], af[mt], bf[nt]);
    }
  };
  auto zero_acc = [&] {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.f;
  };
  // acc[mt][nt][2h + j] is C(wm + 16 mt + g + 8h, wn + 8 nt + 2t + j), g = lane / 4, t = lane % 4.
  auto store = [&](uint32_t task, bool zero_others) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t m = m0 + wm + 16 * mt + lane / 4 + 8 * h;
          const int64_t n = n0 + wn + 8 * nt + lane % 4 * 2;
          const float* v = &acc[mt][nt][2 * h];
          if constexpr (!kWeightGrad) {
            p.out.store_pair(blockIdx.z, m, n, v[0], v[1]);
          } else {
#pragma unroll
            for (int j = 0; j < 2; ++j) {
              if (m >= p.M || n + j >= p.N) continue;
              const bool mine = !p.vis.per_task() || element_kept(p.vis, m, n + j, task);
              if (mine || zero_others) {
                p.out.y[m * p.N + n + j] = narrow<T>(mask_element<T>(p.vis, m, n + j, task, v[j]));
              }
            }
          }
        }
  };

  zero_acc();
  // Forward / grad_input sum their passes; weight-gradient passes store disjoint outputs.
  constexpr bool pass_stores = kWeightGrad;
  int done = 0;
  for_each_task(passes, [&](uint32_t task) {
    if constexpr (pass_stores) zero_acc();
    const int steps = int((ke - kb + BK - 1) / BK);
    load(kb, task);
    stash(0, task);
    __syncthreads();
    for (int s = 0; s < steps; ++s) {
      if (s + 1 < steps) load(kb + (s + 1) * BK, task);  // in flight during the mma work
      compute(s % 2);
      if (s + 1 < steps) stash((s + 1) % 2, task);
      __syncthreads();
    }
    if constexpr (pass_stores) store(task, done == 0);
    ++done;
  });
  if constexpr (!pass_stores) {
    store(p.task, true);
  } else if (done == 0) {  // no weight here belongs to a task present: all gradients are zero
    zero_acc();
    store(0u, true);
  }
}

}  // namespace maskops::cuda
