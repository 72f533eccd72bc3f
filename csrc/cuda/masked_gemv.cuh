// Forward for few rows (M <= 64): a memory-bound pass that streams weight and mask once.
//
// Computes y^T = w_eff x^T on tensor cores, the weight being the 16-row A operand.  Weight,
// mask and x stream through a ring of shared-memory stages filled by cp.async, so several
// stages of loads are in flight without holding registers; each warp then reads its 32-wide
// chunk of a stage, masks the weight in registers and runs the mma.
//
// The reduction order inside each 32-wide chunk is permuted so that every lane reads 16
// contiguous bytes of a weight row: lane (g, t) holds columns 8t .. 8t+7 of the chunk, and
// the mma "k" index 2t/2t+8 stands for columns 8t+{0,1}/8t+{2,3} (then 8t+{4,5}/8t+{6,7});
// x is read with the same permutation, so the sum is unchanged.
//
// A block owns 16 * MT weight rows; a stage holds KW chunks (one per warp) of a K window.
// The warps add up their sums in shared memory at the end.  gridDim.y > 1 splits K further,
// through fp32 partial sums.  Rows of x with different tasks (row_task) are served in the
// same pass over the weight: each task present applies its own mask to the registers.
// S, the kind of mask data, is a template parameter so that only its loads are compiled.
// Operands must allow 16-byte loads (see load_chunk); the launch code checks.
#pragma once

#include <cstdint>

#include "epilogue.cuh"
#include "masked_chunk.cuh"
#include "mma.cuh"
#include "task_set.cuh"

namespace maskops::cuda {

template <class T>
struct GemvParams {
  int64_t M = 0, N = 0, K = 0;   // x (M, K), w (N, K)
  const T* x = nullptr;
  const T* w = nullptr;
  MaskView vis;                  // on w
  uint32_t task = 1;
  const int32_t* row_task = nullptr;
  int64_t chunks_per_split = 0;  // 32-wide chunks of K per blockIdx.y, a multiple of the warps
  Epilogue<T> out;
};

// Shared-memory layout of one stage.  Row pitches are padded so that the rows one warp reads
// at a time fall in distinct banks.
template <class T, Source S, int MT, int NT, int KW>
struct GemvStage {
  static constexpr int kRows = 16 * MT, kXRows = 8 * NT, kCols = 32 * KW;
  static constexpr int kPitch = kCols + 32;  // elements of w / x / soft mask; bytes of owner
  static constexpr int kWordPitch = KW + 1;  // bits
  static constexpr int kWBytes = kRows * kPitch * 2;
  static constexpr int kMaskBytes = S == Source::bytes ? kRows * kPitch
                                    : S == Source::soft ? kRows * kPitch * 2
                                    : S == Source::bits ? kRows * kWordPitch * 4
                                                        : 0;
  static constexpr int kXBytes = kXRows * kPitch * 2;
  static constexpr int kBytes = kWBytes + kMaskBytes + kXBytes;
  static_assert(kWBytes % 16 == 0 && kMaskBytes % 16 == 0, "stage parts must stay 16-byte aligned");
};

template <class T, Source S, int MT, int NT, int KW, int STAGES>
__global__ void __launch_bounds__(KW * 32) masked_gemv(GemvParams<T> p) {
  using L = GemvStage<T, S, MT, NT, KW>;
  constexpr int R = L::kRows, THREADS = KW * 32;
  extern __shared__ uint4 smem[];
  char* const stages = reinterpret_cast<char*>(smem);
  __shared__ uint32_t tasks[kTaskWords];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t n0 = int64_t(blockIdx.x) * R;
  const int64_t windows = (p.K + L::kCols - 1) / L::kCols;
  const int64_t per_split = p.chunks_per_split / KW;
  const int64_t w_begin = blockIdx.y * per_split;
  const int count = int(max(int64_t(0), min(windows, w_begin + per_split) - w_begin));

  const bool mixed = S == Source::bytes && p.row_task && p.vis.per_task();
  if (mixed) collect_tasks(tasks, p.row_task, 0, p.M);
  uint32_t row_task[NT];  // task of x row 8 * nt + g (the mma's column)
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int64_t m = 8 * nt + g;
    row_task[nt] = mixed && m < p.M ? uint32_t(p.row_task[m]) : p.task;
  }

  // Starts the copies of window `win` into stage `slot`; outside the matrices: zeros.
  auto issue = [&](int64_t win, int slot) {
    char* w_s = stages + slot * L::kBytes;
    char* m_s = w_s + L::kWBytes;
    char* x_s = m_s + L::kMaskBytes;
    const int64_t k0 = win * L::kCols;
    for (int q = threadIdx.x; q < R * L::kCols / 8; q += THREADS) {
      const int r = q / (L::kCols / 8), c = q % (L::kCols / 8) * 8;
      const int64_t n = n0 + r, k = k0 + c;
      const bool in = n < p.N && k < p.K;
      const int64_t at = in ? n * p.K + k : 0;
      cp_async<16>(w_s + (r * L::kPitch + c) * 2, p.w + at, in);
      if constexpr (S == Source::bytes) cp_async<8>(m_s + r * L::kPitch + c, p.vis.bytes + at, in);
      if constexpr (S == Source::soft) {
        cp_async<16>(m_s + (r * L::kPitch + c) * 2, static_cast<const T*>(p.vis.soft) + at, in);
      }
    }
    if constexpr (S == Source::bits) {
      for (int q = threadIdx.x; q < R * KW; q += THREADS) {
        const int r = q / KW, j = q % KW;
        const int64_t n = n0 + r, word = k0 / 32 + j;
        const bool in = n < p.N && word < p.vis.bits_ld;
        cp_async<4>(m_s + (r * L::kWordPitch + j) * 4, p.vis.bits + (in ? n * p.vis.bits_ld + word : 0), in);
      }
    }
    for (int q = threadIdx.x; q < L::kXRows * L::kCols / 8; q += THREADS) {
      const int r = q / (L::kCols / 8), c = q % (L::kCols / 8) * 8;
      const int64_t k = k0 + c;
      const bool in = r < p.M && k < p.K;
      cp_async<16>(x_s + (r * L::kPitch + c) * 2, p.x + (in ? r * p.K + k : 0), in);
    }
  };

  float acc[MT][NT][4] = {};
  // This warp's chunk of stage `slot`: load, mask for each task present, multiply.
  auto compute = [&](int slot) {
    const char* w_s = stages + slot * L::kBytes;
    const char* m_s = w_s + L::kWBytes;
    const char* x_s = m_s + L::kMaskBytes;
    const int col = 32 * warp + 8 * t;
    uint4 wv[MT][2], mv[MT][2], xv[NT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = 16 * mt + 8 * h + g;
        wv[mt][h] = *reinterpret_cast<const uint4*>(w_s + (r * L::kPitch + col) * 2);
        mv[mt][h] = make_uint4(0, 0, 0, 0);
        if constexpr (S == Source::bytes) {
          const uint2 b = *reinterpret_cast<const uint2*>(m_s + r * L::kPitch + col);
          mv[mt][h] = make_uint4(b.x, b.y, 0, 0);
        }
        if constexpr (S == Source::soft) mv[mt][h] = *reinterpret_cast<const uint4*>(m_s + (r * L::kPitch + col) * 2);
        if constexpr (S == Source::bits) {
          const uint32_t word = *reinterpret_cast<const uint32_t*>(m_s + (r * L::kWordPitch + warp) * 4);
          mv[mt][h].x = (word >> (8 * t)) & 0xFFu;
        }
      }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) xv[nt] = *reinterpret_cast<const uint4*>(x_s + ((8 * nt + g) * L::kPitch + col) * 2);

    auto pass = [&](uint32_t task) {
      uint4 a[MT][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          a[mt][h] = wv[mt][h];
          apply_mask<T, S>(a[mt][h], mv[mt][h], p.vis, task);
        }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const uint4 b4 = row_task[nt] == task ? xv[nt] : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          const uint32_t b[2] = {word(b4, 2 * k), word(b4, 2 * k + 1)};
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            const uint32_t af[4] = {word(a[mt][0], 2 * k), word(a[mt][1], 2 * k), word(a[mt][0], 2 * k + 1),
                                    word(a[mt][1], 2 * k + 1)};
            mma_16816<T>(acc[mt][nt], af, b);
          }
        }
      }
    };
    if (mixed) {
      for_each_task(tasks, pass);
    } else {
      pass(p.task);
    }
  };

  // The ring: STAGES - 1 windows in flight while one is consumed.
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < count) issue(w_begin + s, s);
    cp_async_commit();
  }
  for (int i = 0; i < count; ++i) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // window i has landed for every thread; stage (i - 1) is free again
    if (i + STAGES - 1 < count) issue(w_begin + i + STAGES - 1, (i + STAGES - 1) % STAGES);
    cp_async_commit();
    compute(i % STAGES);
  }
  cp_async_wait<0>();
  __syncthreads();

  // acc[mt][nt][i]: weight row 16 mt + g (+8 for i >= 2), x row 8 nt + 2t (+1 for odd i).
  // The stages are free now: they hold the per-warp sums.
  using Sums = float[R][8 * NT + 1];
  static_assert(sizeof(Sums) * KW <= L::kBytes * STAGES, "the sums must fit in the stages");
  Sums* sum = reinterpret_cast<Sums*>(stages);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) sum[warp][16 * mt + g + 8 * (i / 2)][8 * nt + 2 * t + i % 2] = acc[mt][nt][i];
  __syncthreads();
  for (int e = threadIdx.x; e < R * 8 * NT; e += THREADS) {
    const int r = e % R, m = e / R;
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < KW; ++w) v += sum[w][r][m];
    const int64_t n = n0 + r;
    if (m >= p.M || n >= p.N) continue;
    if (p.out.partial) {
      p.out.partial[(blockIdx.y * p.M + m) * p.N + n] = v;
    } else {
      p.out.y[m * p.N + n] = narrow<T>(p.out.finish(m, n, v));
    }
  }
}

}  // namespace maskops::cuda
