// Unit test of the torch-free CPU kernels against naive loops.  Exit status 1 on a mismatch.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "isa.h"
#include "blocks.h"
#include "epilogue.h"
#include "few_rows.h"
#include "linear.h"
#include "masking.h"
#include "task_groups.h"

using namespace maskops::cpu;

namespace {

int failures = 0;
std::mt19937 rng(1234);

template <class T>
std::vector<T> random_values(size_t n) {
  std::normal_distribution<double> normal;
  std::vector<T> v(n);
  for (auto& e : v) e = T(normal(rng));
  return v;
}

std::vector<uint8_t> random_bytes(size_t n, int high) {
  std::uniform_int_distribution<int> pick(0, high);
  std::vector<uint8_t> v(n);
  for (auto& e : v) e = uint8_t(pick(rng));
  return v;
}

template <class T>
void expect_close(const char* what, const std::vector<T>& got, const std::vector<T>& want,
                  double tol) {
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::abs(double(got[i]) - double(want[i])) > tol * (1 + std::abs(double(want[i])))) {
      std::printf("FAIL %s: element %zu is %g, expected %g\n", what, i, double(got[i]),
                  double(want[i]));
      ++failures;
      return;
    }
  }
}

// The definition: effective weight of element i for task t.
template <class T>
T naive_effective(const Vis<T>& v, size_t i, T w, int t) {
  switch (v.mode) {
    case Mode::visible: return (v.owner[i] > 0 && v.owner[i] <= t) ? w : T(0);
    case Mode::trainable: return v.owner[i] == t ? w : T(0);
    case Mode::mask: return v.soft ? w * v.soft[i] : (v.binary[i] ? w : T(0));
    default: return w;
  }
}

struct Case {
  int64_t M, N, K;
  Mode mode;
  bool soft, row_tasks, bias, row_out_mask;
  bool bits = false;  // visible mode read from a 1-bit map of the task instead of the owner
};

// The 1-bit visible map of `task`: bit i % 32 of word i / 32 for element i.
std::vector<uint32_t> visible_bits(const std::vector<uint8_t>& owner, int task) {
  std::vector<uint32_t> words((owner.size() + 31) / 32, 0);
  for (size_t i = 0; i < owner.size(); ++i)
    if (owner[i] > 0 && owner[i] <= task) words[i / 32] |= 1u << (i % 32);
  return words;
}

template <class T>
void check_linear(const Case& c, double tol) {
  const int64_t M = c.M, N = c.N, K = c.K;
  auto x = random_values<T>(M * K), w = random_values<T>(N * K), g = random_values<T>(M * N);
  auto owner = random_bytes(N * K, 3), binary = random_bytes(N * K, 1);
  auto soft = random_values<T>(N * K);
  auto bias = random_values<T>(N), out_mask = random_values<T>(c.row_out_mask ? M * N : N);
  std::vector<int32_t> tasks(M);
  for (auto& t : tasks) t = 1 + int(rng() % 3);

  Vis<T> v;
  v.mode = c.mode;
  v.owner = owner.data();
  v.binary = c.soft ? nullptr : binary.data();
  v.soft = c.soft ? soft.data() : nullptr;
  v.task = 2;
  const std::vector<uint32_t> bits = visible_bits(owner, v.task);
  if (c.bits) v.bits = bits.data();
  // Per-row tasks as the binding layer passes them: a routing, turned into row groups.
  std::vector<int64_t> order(M), offsets(maskops::kTaskIds + 1);
  sort_by_task(tasks.data(), M, order.data(), offsets.data());
  const bool per_row = c.row_tasks && v.per_task();
  const TaskGroups groups = per_row ? group_rows(order.data(), offsets.data(), M, 1)
                                    : single_task(unsigned(v.task), M);
  Epilogue<T> epi;
  if (c.bias) epi.bias = bias.data();
  epi.out_mask = out_mask.data();
  epi.out_mask_row_stride = c.row_out_mask ? N : 0;

  std::vector<T> y_want(M * N), gx_want(M * K, T(0)), gw_want(N * K, T(0));
  for (int64_t i = 0; i < M; ++i) {
    const int t = per_row ? tasks[i] : v.task;
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) {
        const T e = naive_effective(v, n * K + k, w[n * K + k], t);
        s += double(x[i * K + k]) * e;
        gx_want[i * K + k] += g[i * N + n] * e;
        gw_want[n * K + k] += naive_effective(v, n * K + k, T(g[i * N + n] * x[i * K + k]), t);
      }
      if (c.bias) s += bias[n];
      y_want[i * N + n] = T(s * out_mask[(c.row_out_mask ? i * N : 0) + n]);
    }
  }
  std::vector<T> y(M * N), gx(M * K), gw(N * K, T(7));
  linear_forward<T>(x.data(), M, K, w.data(), N, v, groups, nullptr, epi, y.data(), simple_gemm<T>);
  linear_grad_input<T>(g.data(), M, N, w.data(), K, v, groups, gx.data(), simple_gemm<T>);
  linear_grad_weight<T>(g.data(), M, N, x.data(), K, v, groups, gw.data(), simple_gemm<T>);
  char what[160];
  std::snprintf(what, sizeof what, "M=%lld N=%lld K=%lld mode=%d soft=%d row_tasks=%d bits=%d",
                (long long)M, (long long)N, (long long)K, int(c.mode), c.soft, c.row_tasks, c.bits);
  std::string base(what);
  expect_close((base + " forward").c_str(), y, y_want, tol);
  expect_close((base + " grad_input").c_str(), gx, gx_want, tol);
  expect_close((base + " grad_weight").c_str(), gw, gw_want, tol);
  if (c.mode == Mode::trainable && !c.row_tasks)  // exact zeros outside owner == task
    for (int64_t i = 0; i < N * K; ++i)
      if (owner[i] != v.task && gw[i] != T(0)) {
        std::printf("FAIL %s: grad_weight not exactly zero at %lld\n", what, (long long)i);
        ++failures;
        break;
      }
}

void check_groups() {
  const std::vector<int32_t> tasks = {3, 1, 3, 2, 1};
  std::vector<int64_t> order(5), offsets(maskops::kTaskIds + 1);
  sort_by_task(tasks.data(), 5, order.data(), offsets.data());
  if (order != std::vector<int64_t>{1, 4, 3, 0, 2} || offsets[1] != 0 || offsets[2] != 2 ||
      offsets[3] != 3 || offsets[4] != 5 || offsets[maskops::kTaskIds] != 5)
    std::printf("FAIL sort_by_task\n"), ++failures;
  // Two rows per sample: rows 2i and 2i+1 belong to sample i.
  const TaskGroups g = group_rows(order.data(), offsets.data(), 5, 2);
  const std::vector<int64_t> rows = {2, 3, 8, 9, 6, 7, 0, 1, 4, 5};
  if (g.groups.size() != 3 || g.order != rows || g.groups[2].task != 3 || g.groups[2].begin != 6)
    std::printf("FAIL group_rows\n"), ++failures;
  const std::vector<int32_t> sorted = {1, 1, 2, 3};
  sort_by_task(sorted.data(), 4, order.data(), offsets.data());
  const TaskGroups in_place = group_rows(order.data(), offsets.data(), 4, 2);
  if (in_place.groups.size() != 3 || in_place.reordered() || in_place.groups[1].begin != 4 ||
      in_place.groups[2].end != 8 || in_place.row(5) != 5)
    std::printf("FAIL group_rows of samples sorted by task\n"), ++failures;
  const std::vector<int32_t> same = {2, 2};
  sort_by_task(same.data(), 2, order.data(), offsets.data());
  const TaskGroups one = group_rows(order.data(), offsets.data(), 2, 3);
  if (one.groups.size() != 1 || one.reordered() || one.groups[0].task != 2 || one.groups[0].end != 6)
    std::printf("FAIL group_rows with one task\n"), ++failures;
  const std::vector<int32_t> bad = {0};
  try {
    sort_by_task(bad.data(), 1, order.data(), offsets.data());
    std::printf("FAIL sort_by_task accepted task 0\n"), ++failures;
  } catch (const std::invalid_argument&) {
  }
  offsets[maskops::kTaskIds] = 7;  // more samples than the batch has
  try {
    group_rows(order.data(), offsets.data(), 2, 1);
    std::printf("FAIL group_rows accepted a routing of another batch\n"), ++failures;
  } catch (const std::invalid_argument&) {
  }
}

void check_masking() {
  // Task 2 sees owners 1 and 2 only: row 0 has visible weights, row 1 has none.
  const std::vector<uint8_t> owner = {1, 0, 2, 3, 2, 0, 0, 3, 3, 0};
  std::vector<float> w(10, 1.5f), out(5, -1.f);
  const std::vector<float> row0 = {1.5f, 0.f, 1.5f, 0.f, 1.5f};
  Vis<float> v;
  v.mode = Mode::visible;
  v.owner = owner.data();
  if (!mask_block(w.data(), 5, v, 5, 2, 1, 5, out.data(), 5) || out != row0)
    std::printf("FAIL mask_block\n"), ++failures;
  if (mask_block(w.data() + 5, 5, v.at(5), 5, 2, 1, 5, out.data(), 5))
    std::printf("FAIL mask_block reported a visible weight in an invisible row\n"), ++failures;
  v.mode = Mode::trainable;
  if (any_selected(v.at(5), 5, 2, 1, 5) || !any_selected(v, 5, 2, 2, 5))
    std::printf("FAIL any_selected\n"), ++failures;
  // A conv weight (out 1, in 2, taps 5), masked for task 2, in the channels_last layout
  // (out 1, taps 5, in 2).
  v.mode = Mode::visible;
  std::vector<float> ramp(10), cl(10);
  for (int i = 0; i < 10; ++i) ramp[i] = float(i + 1);
  mask_array_channels_last(ramp.data(), v, 2, 1, 2, 5, cl.data());
  const std::vector<float> transposed = {1, 0, 0, 0, 3, 0, 0, 0, 5, 0};  // (taps 5, in 2)
  if (cl != transposed) std::printf("FAIL mask_array_channels_last\n"), ++failures;
}

// The few-row forward that skips hidden blocks equals the naive product; a row of x holding
// a NaN gives NaN where its products were skipped.
template <class T>
void check_blocks(int64_t M, double tol) {
  const int64_t N = 70, K = 200;  // ragged block rows and columns
  auto x = random_values<T>(M * K), w = random_values<T>(N * K);
  std::vector<uint8_t> owner(N * K);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t block = (n / kBlockRows) * 7 + k / kBlockCols;
      owner[n * K + k] = block % 3 == 0 ? 3 : block % 3 == 1 ? 1 : uint8_t(rng() % 3);  // hidden, full, partial
    }
  std::vector<uint8_t> map(block_grid(N, kBlockRows) * block_grid(K, kBlockCols));
  visible_blocks(owner.data(), N, K, 2, map.data());
  if (map[0] != kHidden || map[1] != kFull)
    std::printf("FAIL visible_blocks\n"), ++failures;
  BlockMaps maps;
  maps.by_task = {nullptr, nullptr, map.data()};
  Vis<T> v;
  v.mode = Mode::visible;
  v.owner = owner.data();
  v.task = 2;
  if (M > 1) x[K + 3] = std::numeric_limits<T>::quiet_NaN();  // row 1 holds a NaN
  std::vector<T> y(M * N), want(M * N);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += double(x[i * K + k]) * naive_effective(v, n * K + k, w[n * K + k], 2);
      want[i * N + n] = T(s);
    }
  linear_forward<T>(x.data(), M, K, w.data(), N, v, single_task(2, M), &maps, Epilogue<T>{}, y.data(),
                    simple_gemm<T>);
  char what[64];
  std::snprintf(what, sizeof what, "block-skipping forward M=%lld", (long long)M);
  for (int64_t i = 0; i < M * N; ++i) {
    const bool nan_row = M > 1 && i / N == 1;
    if (nan_row ? !std::isnan(double(y[i])) : std::abs(double(y[i]) - double(want[i])) > tol * (1 + std::abs(double(want[i])))) {
      std::printf("FAIL %s: element %lld is %g, expected %s\n", what, (long long)i, double(y[i]),
                  nan_row ? "NaN" : std::to_string(double(want[i])).c_str());
      ++failures;
      return;
    }
  }
}

// 16-bit weights: masked copies keep the exact bit patterns, and the fused forward sums the
// widened weights (K = 70: whole steps and a tail).
template <class W>
void check_16bit() {
  const int64_t N = 9, K = 70, M = 7;  // more rows than kFewRows: the wide dot kernels too
  const auto values = random_values<float>(N * K);
  auto x = random_values<float>(M * K);
  for (float& e : x) e = widen(narrow<W>(e));  // widened 16-bit activations, as the ops pass
  const auto owner = random_bytes(N * K, 3);
  std::vector<W> w(N * K), out(N * K);
  for (int64_t i = 0; i < N * K; ++i) w[i] = narrow<W>(values[i]);
  Vis<W> v;
  v.mode = Mode::visible;
  v.owner = owner.data();
  mask_block(w.data(), K, v, K, 2, N, K, out.data(), K);
  std::vector<float> y(M * N);
  few_rows_forward<W>(x.data(), K, M, w.data(), v, K, {{0, K}}, 2, N, y.data(), N);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const bool seen = owner[n * K + k] > 0 && owner[n * K + k] <= 2;
      if (out[n * K + k].bits != (seen ? w[n * K + k].bits : 0)) {
        std::printf("FAIL 16-bit mask_block at %lld\n", (long long)(n * K + k));
        ++failures;
        return;
      }
    }
    for (int64_t m = 0; m < M; ++m) {
      double want = 0;
      for (int64_t k = 0; k < K; ++k) want += double(x[m * K + k]) * widen(out[n * K + k]);
      if (std::abs(want - y[m * N + n]) > 1e-4 * (1 + std::abs(want))) {
        std::printf("FAIL 16-bit forward row %lld: %g, expected %g\n", (long long)m, y[m * N + n], want);
        ++failures;
        return;
      }
    }
  }
}

// Whether task 2 sees a weight (naive_effective's rule, without the weight).
double seen(Mode mode, uint8_t owner, uint8_t binary) {
  switch (mode) {
    case Mode::visible: return owner > 0 && owner <= 2;
    case Mode::trainable: return owner == 2;
    case Mode::mask: return binary != 0;
    default: return 1;
  }
}

// dot_forward (the avx512bf16 level) in every mode it takes: rows of x on both sides of its
// passes, weight rows in groups of 8, 4, 2 and 1, K ranges with tails and a full one.
void check_dot_forward() {
  const int64_t N = 15, K = 230;
  const std::vector<KRange> ranges = {{0, 64, true}, {70, 135}, {160, 230}};
  auto owner = random_bytes(N * K, 3);
  auto binary = random_bytes(N * K, 1);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < 64; ++k) owner[n * K + k] = 2, binary[n * K + k] = 1;  // full range
  const auto bits = visible_bits(owner, 2);
  const auto values = random_values<float>(N * K);
  std::vector<bf16> w(N * K);
  for (int64_t i = 0; i < N * K; ++i) w[i] = to_bf16(values[i]);
  for (Mode mode : {Mode::dense, Mode::visible, Mode::trainable, Mode::mask})
    for (bool use_bits : {false, true}) {
      if (use_bits && mode != Mode::visible) continue;
      Vis<bf16> v;
      v.mode = mode;
      v.owner = owner.data();
      v.binary = binary.data();
      if (use_bits) v.bits = bits.data();
      for (int64_t M : {1, 2, 3, 7, 16}) {
        const int64_t ldx = dot_row_stride(K);
        std::vector<bf16> x(M * ldx);
        const auto xv = random_values<float>(M * ldx);
        for (int64_t i = 0; i < M * ldx; ++i) x[i] = to_bf16(xv[i]);
        std::vector<float> y(M * N, -1.f), want(M * N, 0.f);
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n) {
            double sum = 0;
            for (const KRange& range : ranges)
              for (int64_t k = range.begin; k < range.end; ++k)
                sum += double(widen(x[m * ldx + k])) * widen(w[n * K + k]) *
                       seen(mode, owner[n * K + k], binary[n * K + k]);
            want[m * N + n] = float(sum);
          }
        dot_forward(x.data(), ldx, M, w.data(), v, K, ranges, 2, N, y.data(), N);
        char what[64];
        std::snprintf(what, sizeof what, "dot_forward mode %d%s M=%lld", int(mode),
                      use_bits ? " (bits)" : "", (long long)M);
        expect_close(what, y, want, 1e-4);
      }
    }
}

}  // namespace

int main() {
  check_groups();
  check_masking();
  for (Isa isa : supported_isas()) {
    set_isa(isa);
    for (int64_t M : {1, 2, 3, 4, 9, 16}) {
      check_blocks<float>(M, 1e-4);
      check_blocks<double>(M, 1e-10);
    }
  }
  const Mode modes[] = {Mode::dense, Mode::visible, Mode::trainable, Mode::mask};
  // Sizes cover the fused few-row path (M <= 8), the panel + gemm path, and ragged blocks.
  const int64_t shapes[][3] = {{1, 7, 5}, {3, 33, 70}, {8, 9, 300}, {13, 70, 37}, {40, 17, 600}};
  // Every instruction set this CPU runs, the portable one included.
  for (Isa isa : supported_isas()) {
    set_isa(isa);
    std::printf("checking the %s kernels\n", isa_name(isa));
    check_16bit<bf16>();
    check_16bit<f16>();
    for (auto& s : shapes)
      for (Mode mode : modes)
        for (int variant = 0; variant < 4; ++variant) {
          const Case c{s[0], s[1], s[2], mode, variant == 1 && mode == Mode::mask,
                       variant >= 2, variant % 2 == 1, variant == 3,
                       variant == 1 && mode == Mode::visible};
          check_linear<double>(c, 1e-9);
          check_linear<float>(c, 1e-3);
        }
  }
  const auto isas = supported_isas();
  if (std::find(isas.begin(), isas.end(), Isa::avx512bf16) != isas.end()) {
    set_isa(Isa::avx512bf16);
    check_dot_forward();
  } else {
    std::printf("dot_forward not checked: this CPU lacks AVX-512 BF16\n");
  }
  // Conv output channels scaled in both memory layouts: (B=2, C=3, P=4).
  std::vector<float> nchw(24, 1.f), nhwc(24, 1.f), mask = {1, 2, 3, 4, 5, 6};
  scale_channels(nchw.data(), 2, 3, 4, 12, 4, 1, mask.data(), 3);
  scale_channels(nhwc.data(), 2, 3, 4, 12, 1, 3, mask.data(), 3);
  if (nchw[4] != 2.f || nchw[23] != 6.f || nhwc[1] != 2.f || nhwc[23] != 6.f)
    std::printf("FAIL scale_channels\n"), ++failures;
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("all CPU kernel checks passed\n");
  return 0;
}
