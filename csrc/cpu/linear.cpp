#include "linear.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "few_rows.h"
#include "masking.h"
#include "parallel.h"
#include "scratch.h"
#include "task_groups.h"

namespace maskops::cpu {

namespace {

// Groups of rows up to this size use the fused kernels of few_rows.h, in chunks of
// kFewRows rows; larger groups mask a weight panel into scratch and call gemm.  Measured
// (fp32, K = N = 4096): fused is faster up to about 16 rows, gemm from about 32.
constexpr int64_t kFusedMaxRows = 16;
static_assert(kWideRows >= kFusedMaxRows, "dot_forward takes every fused group whole");
// Weight panel sizes: fused chunks re-read their panel from L2; gemm wants large panels,
// since BLAS repacks the activations on every call.
constexpr int64_t kFusedPanelBytes = 128 << 10;
constexpr int64_t kGemmPanelBytes = 4 << 20;
// Weights up to this size, when every group is larger than kFusedMaxRows: one masked copy of
// the whole weight per group and one product from the calling thread, where BLAS uses every
// thread.  Panels split such a product into thin ones that each repack x (timm's ViT-tiny at
// batch 16, 3152 rows by a 576 x 192 weight, 2 threads: 4.9 ms in panels, 4.0 ms dense).
constexpr int64_t kWholeWeightBytes = 1 << 20;
// Input gradient of small batches: each thread sums into a private gx of at most this size.
constexpr int64_t kPartialBytes = 64 << 20;
// Tiles of the input gradient otherwise: weight blocks that stay in L2 while every group
// uses them.
constexpr int64_t kTileBytes = 128 << 10;
constexpr int64_t kTileCols = 256;
// Tiles of the weight gradient: the unit of skipping (no selected weight: no product) and
// of one gemm; large enough that BLAS packing is a small part of each call.
constexpr int64_t kGradWeightTileRows = 128;
constexpr int64_t kGradWeightTileCols = 512;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Block length along a dimension of `size`: about `target`, a multiple of `align`, and
// small enough that every thread gets a few blocks.
int64_t block_size(int64_t size, int64_t target, int64_t align) {
  const int64_t balanced = round_up(ceil_div(size, 4 * int64_t(max_threads())), align);
  return std::max<int64_t>(align, std::min(round_up(target, align), balanced));
}

template <class T>
void zero_block(T* a, int64_t lda, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) std::memset(a + r * lda, 0, sizeof(T) * cols);
}

// Which rows of a (rows x cols) matrix hold a NaN or an infinity.  A product such a row meets
// is not finite, even with a weight of zero (NaN * 0, inf * 0); where the kernels skip a
// product the task cannot see, they write NaN for these rows, so every path gives what dense
// math on the masked weight gives.
template <class T>
std::vector<char> nonfinite_rows(const T* a, int64_t lda, int64_t rows, int64_t cols) {
  std::vector<char> flags(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = a + r * lda;
    T zero = 0;  // becomes NaN exactly when the row holds a NaN or an infinity
#pragma omp simd reduction(+ : zero)
    for (int64_t c = 0; c < cols; ++c) zero += row[c] * T(0);
    flags[r] = zero != zero;
  }
  return flags;
}

// A skipped product's block of the output: zero, or NaN in the rows `nonfinite` flags.
template <class T>
void skipped_block(T* a, int64_t lda, int64_t rows, int64_t cols, const char* nonfinite) {
  for (int64_t r = 0; r < rows; ++r)
    if (nonfinite[r]) std::fill(a + r * lda, a + r * lda + cols, std::numeric_limits<T>::quiet_NaN());
}

// Rows in grouped order: the originals when not reordered, else a gathered copy.
template <class T>
struct GroupedRows {
  const T* data;
  std::vector<T> copy;
  GroupedRows(const T* rows, int64_t cols, const TaskGroups& groups) : data(rows) {
    if (!groups.reordered()) return;
    copy.resize(groups.order.size() * cols);
    gather_rows(rows, cols, groups.order, cols, copy.data(), cols);
    data = copy.data();
  }
};

// Where grouped output rows go: the output itself, or a buffer scattered back by `finish`.
template <class T>
struct GroupedOutput {
  T* data;
  std::vector<T> buffer;
  GroupedOutput(T* out, int64_t rows, int64_t cols, const TaskGroups& groups) : data(out) {
    if (!groups.reordered()) return;
    buffer.resize(rows * cols);
    data = buffer.data();
  }
  // out[order[i]] = buffer[i], then the epilogue on each row.
  void finish(T* out, int64_t cols, const TaskGroups& groups, const Epilogue<T>& epilogue) {
    if (!groups.reordered()) return;
    const int64_t rows = int64_t(groups.order.size());
    parallel_for(rows, threads_above(rows * cols, 1 << 16), Schedule::even, [&](int64_t i) {
      T* dst = out + groups.order[i] * cols;
      std::memcpy(dst, data + i * cols, sizeof(T) * cols);
      if (epilogue.active()) epilogue.apply(dst, groups.order[i], 0, cols);
    });
  }
};

// Whether some block of a map region is wholly hidden or wholly visible: then products per
// run of blocks skip work or mask reads; where every block is partly visible (fine-grained
// ownership) one masked panel and one product are faster.
inline bool any_whole_block(const uint8_t* map, int64_t count) {
  return std::any_of(map, map + count, [](uint8_t b) { return b != kPartial; });
}

// y (m, rows) = x (m, K) times the visible blocks of w's rows (rows, K), whose block map rows
// start at `map`: per block row, one product per run of visible blocks, on the weight itself
// where the run is fully visible, on a masked copy where partly.  Consecutive block rows that
// see all of K share one product (thin products run below the GEMM's speed: 128 products of
// 32 rows ran 0.74x of one, M = 256, N = K = 4096).
template <class T>
void block_products(const T* x, int64_t m, int64_t K, const T* w, const Vis<T>& v, unsigned task,
                    const uint8_t* map, int64_t rows, T* y, int64_t ldy, const char* nonfinite,
                    Gemm<T> gemm) {
  T* masked = thread_scratch<T>(kBlockRows * K);
  const int64_t block_cols = block_grid(K, kBlockCols);
  int64_t whole_begin = 0;  // block rows [whole_begin, b0) see all of K, product pending
  auto flush = [&](int64_t end) {
    gemm(false, true, m, end - whole_begin, K, x, K, w + whole_begin * K, K, T(0), y + whole_begin, ldy);
  };
  for (int64_t b0 = 0; b0 < rows; b0 += kBlockRows) {
    const int64_t rows_b = std::min(kBlockRows, rows - b0);
    const std::vector<KRange> ranges = visible_ranges(map + (b0 / kBlockRows) * block_cols, K);
    if (ranges.size() == 1 && ranges[0].full && ranges[0].begin == 0 && ranges[0].end == K) continue;
    if (whole_begin < b0) flush(b0);
    whole_begin = b0 + rows_b;
    T beta = 0;
    int64_t covered = 0;
    for (const KRange& r : ranges) {
      const int64_t len = r.end - r.begin;
      const T* wb = w + b0 * K + r.begin;
      int64_t ld = K;
      if (!r.full) {
        mask_block(wb, K, v.at(b0 * K + r.begin), K, task, rows_b, len, masked, len);
        wb = masked, ld = len;
      }
      gemm(false, true, m, rows_b, len, x + r.begin, K, wb, ld, beta, y + b0, ldy);
      beta = 1, covered += len;
    }
    if (ranges.empty()) zero_block(y + b0, ldy, m, rows_b);
    if (covered != K) skipped_block(y + b0, ldy, m, rows_b, nonfinite);
  }
  if (whole_begin < rows) flush(rows);
}

// A group of more than kFusedMaxRows rows on panel rows [0, rows_w) of w: masked panels (or
// runs of visible blocks, with `map`) multiplied by gemm.
template <class T>
void many_rows_forward(const T* xg, int64_t m, int64_t K, const T* wp, const Vis<T>& vp,
                       unsigned task, const uint8_t* map, int64_t rows_w, T* yg, int64_t ldy,
                       const char* nonfinite, Gemm<T> gemm) {
  if (map != nullptr) {
    block_products(xg, m, K, wp, vp, task, map, rows_w, yg, ldy, nonfinite, gemm);
  } else if (vp.mode == Mode::dense) {
    gemm(false, true, m, rows_w, K, xg, K, wp, K, T(0), yg, ldy);
  } else {
    T* masked = thread_scratch<T>(rows_w * K);
    if (mask_block(wp, K, vp, K, task, rows_w, K, masked, K)) {
      gemm(false, true, m, rows_w, K, xg, K, masked, K, T(0), yg, ldy);
    } else {
      zero_block(yg, ldy, m, rows_w);
      skipped_block(yg, ldy, m, rows_w, nonfinite);
    }
  }
}

// A group of more than kFusedMaxRows rows times the whole (small) weight: one masked copy,
// made on every thread, and one product from the calling thread.  With a bias, y starts as
// the bias and the product adds to it, as addmm does, instead of a pass over y on one thread
// afterwards.  Whether x has non-finite rows matters only when the task sees nothing.
template <class T>
void whole_weight_forward(const T* xg, int64_t m, int64_t K, const T* w, const Vis<T>& v,
                          unsigned task, int64_t N, const T* bias, T* yg, int64_t ldy,
                          Gemm<T> gemm) {
  if (bias)
    parallel_for(m, threads_above(m * N, 1 << 16), Schedule::even,
                 [&](int64_t r) { std::memcpy(yg + r * ldy, bias, sizeof(T) * N); });
  const T beta = bias ? T(1) : T(0);
  if (v.mode == Mode::dense) {
    gemm(false, true, m, N, K, xg, K, w, K, beta, yg, ldy);
    return;
  }
  T* masked = thread_scratch<T>(N * K);
  if (mask_array(w, v, task, N * K, masked)) {
    gemm(false, true, m, N, K, xg, K, masked, K, beta, yg, ldy);
    return;
  }
  if (!bias) zero_block(yg, ldy, m, N);
  skipped_block(yg, ldy, m, N, nonfinite_rows(xg, K, m, K).data());
}

// linear_forward with weights of type W and x, y of type T: the same, or bfloat16 weights
// with fp32 x and y when every group runs the fused kernels.
template <class T, class W>
void forward(const T* x, int64_t M, int64_t K, const W* w, int64_t N, const Vis<W>& vis,
             const TaskGroups& groups, const BlockMaps* blocks, const Epilogue<T>& epilogue, T* y,
             Gemm<T> gemm) {
  if (M == 0 || N == 0) return;
  const GroupedRows<T> xs(x, K, groups);
  GroupedOutput<T> ys(y, M, N, groups);
  const bool epilogue_here = !groups.reordered() && epilogue.active();
  const int64_t panel_bytes = all_fused(groups) ? kFusedPanelBytes : kGemmPanelBytes;
  const int64_t row_bytes = int64_t(sizeof(W)) * std::max<int64_t>(K, 1);
  // Panels start at a block row, so block rows never straddle two.
  const int64_t panel = block_size(N, panel_bytes / row_bytes, blocks ? kBlockRows : 8);
  const int64_t panels = ceil_div(N, panel);
  const int64_t block_cols = block_grid(K, kBlockCols);
  const std::vector<KRange> everything = {{0, K}};

  if constexpr (std::is_same_v<T, W>) {
    const bool all_large = std::all_of(groups.groups.begin(), groups.groups.end(),
                                       [](const TaskGroup& g) { return g.size() > kFusedMaxRows; });
    if (all_large && int64_t(sizeof(W)) * N * K <= kWholeWeightBytes) {
      Epilogue<T> after = epilogue;  // what is left once the bias is in the product
      after.bias = nullptr;
      for (const TaskGroup& g : groups.groups) {
        T* yg = ys.data + g.begin * N;
        whole_weight_forward(xs.data + g.begin * K, g.size(), K, w, vis, g.task, N,
                             epilogue_here ? epilogue.bias : nullptr, yg, N, gemm);
        if (epilogue_here && after.active())
          for (int64_t r = 0; r < g.size(); ++r) after.apply(yg + r * N, g.begin + r, 0, N);
      }
      ys.finish(y, N, groups, epilogue);
      return;
    }
  }

  // Skipped products: panels the task cannot see, and blocks the fused kernels leave out.
  const bool skips = blocks != nullptr || !all_fused(groups);
  const std::vector<char> nonfinite = skips ? nonfinite_rows(xs.data, K, M, K) : std::vector<char>(M);
  // bfloat16 dot products read x in bfloat16: rounded back once per call (exact, since the op
  // widened bfloat16 x), not once per weight panel.
  std::vector<bf16> narrowed;
  const int64_t ldn = dot_row_stride(K);
  if constexpr (std::is_same_v<W, bf16>) {
    if (all_fused(groups) && dot_forward_takes(vis)) {
      narrowed.resize(M * ldn);
      narrow_rows(xs.data, K, M, K, narrowed.data(), ldn);
    }
  }

  parallel_for(panels, threads_for(M * N * K), Schedule::dynamic, [&](int64_t p) {
    const int64_t n0 = p * panel, rows_w = std::min(panel, N - n0);
    const W* wp = w + n0 * K;
    const Vis<W> vp = vis.at(n0 * K);
    for (const TaskGroup& g : groups.groups) {
      const int64_t m = g.size();
      const T* xg = xs.data + g.begin * K;
      T* yg = ys.data + g.begin * N + n0;
      const uint8_t* map = blocks ? blocks->of(g.task) : nullptr;
      const int64_t panel_map = (n0 / kBlockRows) * block_cols;
      const int64_t panel_blocks = ceil_div(rows_w, kBlockRows) * block_cols;
      // Every block partly visible (fine-grained ownership): nothing to skip, and the plain
      // loops run larger panels.
      if (map != nullptr && !any_whole_block(map + panel_map, panel_blocks)) map = nullptr;
      // Rows [r0, r1) of the panel through the fused kernels, over `ranges` (`visible`
      // elements per row): chunks of rows of x re-read the weights of `sub` rows from cache.
      // (Masking the sub-panel once into scratch for all chunks ran slower: bfloat16, 16 rows,
      // N = K = 4096, 7.1 -> 10.5 ms; fp32 9.4 -> 12.5 ms.)
      auto fused = [&](int64_t r0, int64_t r1, const std::vector<KRange>& ranges, int64_t visible) {
        if constexpr (std::is_same_v<W, bf16>) {
          if (!narrowed.empty()) {  // every row of x in one call
            dot_forward(narrowed.data() + g.begin * ldn, ldn, m, wp + r0 * K, vp.at(r0 * K), K,
                        ranges, g.task, r1 - r0, yg + r0, N);
            return;
          }
        }
        const int64_t sub = std::clamp<int64_t>(
            kFusedPanelBytes / std::max<int64_t>(1, visible * int64_t(sizeof(W))), 1, r1 - r0);
        for (int64_t s0 = r0; s0 < r1; s0 += sub)
          for (int64_t r = 0; r < m; r += kFewRows)
            few_rows_forward(xg + r * K, K, std::min(kFewRows, m - r), wp + s0 * K, vp.at(s0 * K),
                             K, ranges, g.task, std::min(sub, r1 - s0), yg + r * N + s0, N);
      };
      if (m <= kFusedMaxRows && map == nullptr) {
        fused(0, rows_w, everything, K);
      } else if (m <= kFusedMaxRows) {
        for (int64_t b0 = 0; b0 < rows_w; b0 += kBlockRows) {
          const int64_t rows_b = std::min(kBlockRows, rows_w - b0);
          const std::vector<KRange> ranges =
              visible_ranges(map + ((n0 + b0) / kBlockRows) * block_cols, K);
          int64_t visible = 0;
          for (const KRange& range : ranges) visible += range.end - range.begin;
          fused(b0, b0 + rows_b, ranges, visible);
          if (ranges.size() != 1 || ranges[0].begin != 0 || ranges[0].end != K)
            skipped_block(yg + b0, N, m, rows_b, nonfinite.data() + g.begin);
        }
      } else if constexpr (std::is_same_v<T, W>) {
        many_rows_forward(xg, m, K, wp, vp, g.task, map ? map + panel_map : nullptr, rows_w, yg,
                          N, nonfinite.data() + g.begin, gemm);
      }
      if (epilogue_here)
        for (int64_t r = 0; r < m; ++r) epilogue.apply(yg + r * N, g.begin + r, n0, rows_w);
    }
  });
  ys.finish(y, N, groups, epilogue);
}

}  // namespace

bool all_fused(const TaskGroups& groups) {
  for (const TaskGroup& g : groups.groups)
    if (g.size() > kFusedMaxRows) return false;
  return true;
}

template <class T>
void linear_forward(const T* x, int64_t M, int64_t K, const T* w, int64_t N, const Vis<T>& vis,
                    const TaskGroups& groups, const BlockMaps* blocks, const Epilogue<T>& epilogue,
                    T* y, Gemm<T> gemm) {
  forward(x, M, K, w, N, vis, groups, blocks, epilogue, y, gemm);
}

template <class W>
void linear_forward_fused(const float* x, int64_t M, int64_t K, const W* w, int64_t N,
                          const Vis<W>& vis, const TaskGroups& groups, const BlockMaps* blocks,
                          const Epilogue<float>& epilogue, float* y) {
  if (!all_fused(groups)) throw std::invalid_argument("linear_forward_fused: a group is too large");
  forward<float, W>(x, M, K, w, N, vis, groups, blocks, epilogue, y, nullptr);
}
template void linear_forward_fused<bf16>(const float*, int64_t, int64_t, const bf16*, int64_t,
                                         const Vis<bf16>&, const TaskGroups&, const BlockMaps*,
                                         const Epilogue<float>&, float*);
template void linear_forward_fused<f16>(const float*, int64_t, int64_t, const f16*, int64_t,
                                        const Vis<f16>&, const TaskGroups&, const BlockMaps*,
                                        const Epilogue<float>&, float*);

namespace {

// Input gradient when every group is small: threads split the weight rows, stream whole
// rows (as the forward does) and sum private partial results at the end.  The split is
// static and the partials are added in thread order, so the result is the same on every call
// with the same number of threads.
template <class T>
void grad_input_by_rows(const T* gs, int64_t M, int64_t N, const T* w, int64_t K,
                        const Vis<T>& vis, const TaskGroups& groups, T* gxs) {
  const int threads = threads_for(M * N * K);
  std::vector<T> partials(size_t(threads - 1) * M * K, T(0));  // thread 0 writes gxs
  std::memset(gxs, 0, sizeof(T) * M * K);
  const int64_t panel = block_size(N, kFusedPanelBytes / int64_t(sizeof(T) * K), 8);
  const int64_t panels = ceil_div(N, panel);
  auto panel_into = [&](int64_t p, T* out) {
    const int64_t n0 = p * panel, rows_w = std::min(panel, N - n0);
    for (const TaskGroup& g : groups.groups)
      for (int64_t r = g.begin; r < g.end; r += kFewRows)
        few_rows_grad_input(gs + r * N + n0, N, std::min(kFewRows, g.end - r), w + n0 * K,
                            vis.at(n0 * K), K, g.task, rows_w, K, out + r * K, K);
  };
  if (threads == 1) {  // no OpenMP region of one thread (parallel_for)
    for (int64_t p = 0; p < panels; ++p) panel_into(p, gxs);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int id = thread_id();
    T* out = id == 0 ? gxs : partials.data() + (id - 1) * M * K;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < panels; ++p) panel_into(p, out);
  }
  const int64_t size = M * K;
  parallel_for(size, threads_above(size * threads, 1 << 16), Schedule::even, [&](int64_t i) {
    for (int t = 0; t + 1 < threads; ++t) gxs[i] += partials[t * size + i];
  });
}

// Input gradient by column blocks of gx: weight tiles masked into scratch for gemm (large
// groups) or read by the fused kernels (small groups).
template <class T>
void grad_input_by_columns(const T* gs, int64_t M, int64_t N, const T* w, int64_t K,
                           const Vis<T>& vis, const TaskGroups& groups, T* gxs, Gemm<T> gemm) {
  const int64_t cols = block_size(K, kTileCols, 16);
  const int64_t rows = std::max<int64_t>(8, kTileBytes / int64_t(sizeof(T) * cols));
  const int64_t blocks = ceil_div(K, cols);
  const std::vector<char> nonfinite =
      all_fused(groups) ? std::vector<char>(M) : nonfinite_rows(gs, N, M, N);

  parallel_for(blocks, threads_for(M * N * K), Schedule::dynamic, [&](int64_t b) {
    const int64_t k0 = b * cols, kc = std::min(cols, K - k0);
    zero_block(gxs + k0, K, M, kc);
    for (int64_t n0 = 0; n0 < N; n0 += rows) {
      const int64_t nc = std::min(rows, N - n0);
      const T* wt = w + n0 * K + k0;
      const Vis<T> vt = vis.at(n0 * K + k0);
      for (const TaskGroup& g : groups.groups) {
        const int64_t m = g.size();
        const T* gg = gs + g.begin * N + n0;
        T* out = gxs + g.begin * K + k0;
        if (m <= kFusedMaxRows) {
          for (int64_t r = 0; r < m; r += kFewRows)
            few_rows_grad_input(gg + r * N, N, std::min(kFewRows, m - r), wt, vt, K, g.task, nc,
                                kc, out + r * K, K);
        } else if (vis.mode == Mode::dense) {
          gemm(false, false, m, kc, nc, gg, N, wt, K, T(1), out, K);
        } else {
          T* masked = thread_scratch<T>(nc * kc);
          if (mask_block(wt, K, vt, K, g.task, nc, kc, masked, kc))
            gemm(false, false, m, kc, nc, gg, N, masked, kc, T(1), out, K);
          else
            skipped_block(out, K, m, kc, nonfinite.data() + g.begin);
        }
      }
    }
  });
}

}  // namespace

template <class T>
void linear_grad_input(const T* grad, int64_t M, int64_t N, const T* w, int64_t K,
                       const Vis<T>& vis, const TaskGroups& groups, T* gx, Gemm<T> gemm) {
  if (M == 0 || K == 0) return;
  const GroupedRows<T> gs(grad, N, groups);
  GroupedOutput<T> gxs(gx, M, K, groups);
  // Private partial sums cost threads * M * K: only for small batches.
  if (all_fused(groups) && max_threads() * M * K * int64_t(sizeof(T)) <= kPartialBytes)
    grad_input_by_rows(gs.data, M, N, w, K, vis, groups, gxs.data);
  else
    grad_input_by_columns(gs.data, M, N, w, K, vis, groups, gxs.data, gemm);
  gxs.finish(gx, K, groups, Epilogue<T>{});
}

template <class T>
void linear_grad_weight(const T* grad, int64_t M, int64_t N, const T* x, int64_t K,
                        const Vis<T>& vis, const TaskGroups& groups, T* gw, Gemm<T> gemm) {
  if (N == 0 || K == 0) return;
  if (M == 0) {
    std::memset(gw, 0, sizeof(T) * N * K);
    return;
  }
  const GroupedRows<T> gs(grad, N, groups);
  const GroupedRows<T> xs(x, K, groups);
  const int64_t tile_cols = block_size(K, kGradWeightTileCols, 16);
  const int64_t tile_rows = block_size(N, kGradWeightTileRows, 8);
  const int64_t col_tiles = ceil_div(K, tile_cols);
  const int64_t tiles = ceil_div(N, tile_rows) * col_tiles;

  parallel_for(tiles, threads_for(M * N * K), Schedule::dynamic, [&](int64_t t) {
    const int64_t n0 = (t / col_tiles) * tile_rows, k0 = (t % col_tiles) * tile_cols;
    const int64_t nt = std::min(tile_rows, N - n0), kt = std::min(tile_cols, K - k0);
    T* out = gw + n0 * K + k0;
    const Vis<T> vt = vis.at(n0 * K + k0);
    bool written = false;
    for (const TaskGroup& g : groups.groups) {
      const int64_t m = g.size();
      if (m == 0 || !any_selected(vt, K, g.task, nt, kt)) continue;
      const T* a = gs.data + g.begin * N + n0;
      const T* b = xs.data + g.begin * K + k0;
      if (!written) {
        gemm(true, false, nt, kt, m, a, N, b, K, T(0), out, K);
        mask_in_place(out, K, vt, K, g.task, nt, kt);
        written = true;
      } else {
        T* product = thread_scratch<T>(nt * kt);
        gemm(true, false, nt, kt, m, a, N, b, K, T(0), product, kt);
        add_masked(product, kt, vt, K, g.task, nt, kt, out, K);
      }
    }
    if (!written) zero_block(out, K, nt, kt);
  });
}

#define MASKOPS_INSTANTIATE(T)                                                                  \
  template void linear_forward<T>(const T*, int64_t, int64_t, const T*, int64_t, const Vis<T>&, \
                                  const TaskGroups&, const BlockMaps*, const Epilogue<T>&, T*,  \
                                  Gemm<T>);                                                     \
  template void linear_grad_input<T>(const T*, int64_t, int64_t, const T*, int64_t,             \
                                     const Vis<T>&, const TaskGroups&, T*, Gemm<T>);            \
  template void linear_grad_weight<T>(const T*, int64_t, int64_t, const T*, int64_t,            \
                                      const Vis<T>&, const TaskGroups&, T*, Gemm<T>);
MASKOPS_INSTANTIATE(float)
MASKOPS_INSTANTIATE(double)
#undef MASKOPS_INSTANTIATE

}  // namespace maskops::cpu
