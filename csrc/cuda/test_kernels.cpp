// Unit test of the CUDA kernels (through launch.h) against a host reference in double precision.
// Exits 77 (ctest: skipped) where no GPU is present.  `--bench` times a few shapes instead.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "launch.h"

using namespace maskops::cuda;

#define CHECK(call)                                                                              \
  do {                                                                                           \
    cudaError_t err_ = (call);                                                                   \
    if (err_ != cudaSuccess) {                                                                   \
      std::printf("%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(err_));                  \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

template <class V>
struct DeviceArray {
  V* p = nullptr;
  size_t n = 0;
  explicit DeviceArray(const std::vector<V>& h) : n(h.size()) {
    CHECK(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(V)));
    CHECK(cudaMemcpy(p, h.data(), n * sizeof(V), cudaMemcpyHostToDevice));
  }
  explicit DeviceArray(size_t count) : n(count) {
    CHECK(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(V)));
    CHECK(cudaMemset(p, 0xFF, n * sizeof(V)));  // NaN in every float type: unwritten shows
  }
  DeviceArray(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(p); }
  std::vector<V> get() const {
    std::vector<V> h(n);
    CHECK(cudaMemcpy(h.data(), p, n * sizeof(V), cudaMemcpyDeviceToHost));
    return h;
  }
};

template <class T> DType dtype_of();
template <> DType dtype_of<__half>() { return DType::f16; }
template <> DType dtype_of<__nv_bfloat16>() { return DType::bf16; }
template <class T> const char* name_of() { return dtype_of<T>() == DType::f16 ? "f16" : "bf16"; }

template <class T> T to_t(float v);
template <> __half to_t(float v) { return __float2half_rn(v); }
template <> __nv_bfloat16 to_t(float v) { return __float2bfloat16_rn(v); }
inline double to_d(__half v) { return __half2float(v); }
inline double to_d(__nv_bfloat16 v) { return __bfloat162float(v); }

std::mt19937 rng(1234);

template <class T>
std::vector<T> random_values(size_t n, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<T> v(n);
  for (auto& e : v) e = to_t<T>(d(rng));
  return v;
}

std::vector<uint8_t> random_bytes(size_t n, int hi) {
  std::uniform_int_distribution<int> d(0, hi);
  std::vector<uint8_t> v(n);
  for (auto& e : v) e = uint8_t(d(rng));
  return v;
}

// One problem: sizes, which weights take part, and the host copies of every input.
template <class T>
struct Problem {
  int64_t M, N, K;
  Mode mode;
  bool soft, mixed;
  int task = 2;
  std::vector<uint8_t> owner, binary;
  std::vector<T> soft_mask;
  std::vector<uint32_t> bits;
  std::vector<int32_t> row_task;

  Problem(int64_t m, int64_t n, int64_t k, Mode md, bool sf, bool mx)
      : M(m), N(n), K(k), mode(md), soft(sf), mixed(mx) {
    owner = random_bytes(N * K, 3);
    binary = random_bytes(N * K, 1);
    soft_mask = random_values<T>(N * K, 0.f, 1.f);
    const int64_t words = (K + 31) / 32;
    bits.assign(N * words, 0u);
    for (int64_t n2 = 0; n2 < N; ++n2)
      for (int64_t k2 = 0; k2 < K; ++k2)
        if (owner[n2 * K + k2] > 0 && owner[n2 * K + k2] <= task) bits[n2 * words + k2 / 32] |= 1u << (k2 % 32);
    std::uniform_int_distribution<int> d(1, 3);
    for (int64_t i = 0; i < M; ++i) row_task.push_back(mixed ? d(rng) : task);
  }

  // Factor of weight (n, k) for a row of task t.
  double factor(int64_t n, int64_t k, int t) const {
    const int64_t i = n * K + k;
    switch (mode) {
      case Mode::visible: return owner[i] > 0 && owner[i] <= t;
      case Mode::trainable: return owner[i] == t;
      case Mode::mask: return soft ? to_d(soft_mask[i]) : binary[i];
      case Mode::bits: return (bits[n * ((K + 31) / 32) + k / 32] >> (k % 32)) & 1u;
      default: return 1.0;
    }
  }
};

// Device copies of a problem's selection; vis() points into them.
template <class T>
struct DeviceSelection {
  DeviceArray<uint8_t> owner, binary;
  DeviceArray<T> soft_mask;
  DeviceArray<uint32_t> bits;
  DeviceArray<int32_t> row_task;
  Vis v;
  explicit DeviceSelection(const Problem<T>& p)
      : owner(p.owner), binary(p.binary), soft_mask(p.soft_mask), bits(p.bits), row_task(p.row_task) {
    v.mode = p.mode;
    v.task = p.task;
    v.owner = owner.p;
    v.mask = p.soft ? static_cast<const void*>(soft_mask.p) : binary.p;
    v.soft = p.soft;
    v.bits = bits.p;
    v.row_task = p.mixed ? row_task.p : nullptr;
  }
};

int failures = 0;

template <class T>
void compare(const char* what, const Problem<T>& p, const std::vector<T>& got, const std::vector<double>& want,
             const std::vector<char>* must_be_zero = nullptr) {
  double err = 0, ref = 0;
  bool finite = true, zeros = true;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = to_d(got[i]);
    finite = finite && std::isfinite(g);
    err += (g - want[i]) * (g - want[i]);
    ref += want[i] * want[i];
    if (must_be_zero && (*must_be_zero)[i] && g != 0.0) zeros = false;
  }
  const double rel = std::sqrt(err / std::max(ref, 1e-30));
  const bool ok = finite && zeros && rel < 1e-2;
  if (!ok) ++failures;
  std::printf("%-4s %-11s M=%-5lld N=%-5lld K=%-5lld mode=%d soft=%d mixed=%d  rel=%.2e %s%s\n", ok ? "ok" : "FAIL",
              what, (long long)p.M, (long long)p.N, (long long)p.K, int(p.mode), int(p.soft), int(p.mixed), rel,
              finite ? "" : " (non-finite)", zeros ? "" : " (unselected gradient not zero)");
}

template <class T>
void test_forward(int64_t M, int64_t N, int64_t K, Mode mode, bool soft = false, bool mixed = false, int out_mask = 0) {
  Problem<T> p(M, N, K, mode, soft, mixed);
  const auto x = random_values<T>(M * K), w = random_values<T>(N * K), bias = random_values<T>(N);
  const auto om = random_values<T>(out_mask == 2 ? M * N : N, 0.f, 1.f);
  DeviceArray<T> dx(x), dw(w), db(bias), dom(om), dy(M * N);
  DeviceSelection<T> sel(p);
  LinearForward f;
  f.dtype = dtype_of<T>();
  f.M = M, f.N = N, f.K = K;
  f.x = dx.p, f.w = dw.p, f.vis = sel.v, f.bias = db.p, f.y = dy.p;
  f.out_mask = out_mask ? dom.p : nullptr;
  f.out_mask_per_row = out_mask == 2;
  DeviceArray<char> ws(linear_forward_workspace(f));
  CHECK(linear_forward(f, ws.p, 0));
  CHECK(cudaDeviceSynchronize());
  std::vector<double> want(M * N);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += to_d(x[m * K + k]) * to_d(w[n * K + k]) * p.factor(n, k, p.row_task[m]);
      s += to_d(bias[n]);
      if (out_mask) s *= to_d(om[out_mask == 2 ? m * N + n : n]);
      want[m * N + n] = s;
    }
  compare("forward", p, dy.get(), want);
}

template <class T>
void test_grad_input(int64_t M, int64_t N, int64_t K, Mode mode, bool soft = false, bool mixed = false) {
  Problem<T> p(M, N, K, mode, soft, mixed);
  const auto g = random_values<T>(M * N), w = random_values<T>(N * K);
  DeviceArray<T> dg(g), dw(w), dgx(M * K);
  DeviceSelection<T> sel(p);
  LinearGradInput f;
  f.dtype = dtype_of<T>();
  f.M = M, f.N = N, f.K = K;
  f.grad = dg.p, f.w = dw.p, f.vis = sel.v, f.grad_x = dgx.p;
  DeviceArray<char> ws(linear_grad_input_workspace(f));
  CHECK(linear_grad_input(f, ws.p, 0));
  CHECK(cudaDeviceSynchronize());
  std::vector<double> want(M * K, 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) want[m * K + k] += to_d(g[m * N + n]) * to_d(w[n * K + k]) * p.factor(n, k, p.row_task[m]);
  compare("grad_input", p, dgx.get(), want);
}

template <class T>
void test_grad_weight(int64_t M, int64_t N, int64_t K, Mode mode, bool soft = false, bool mixed = false) {
  Problem<T> p(M, N, K, mode, soft, mixed);
  const auto g = random_values<T>(M * N), x = random_values<T>(M * K);
  DeviceArray<T> dg(g), dx(x), dgw(N * K);
  DeviceSelection<T> sel(p);
  LinearGradWeight f;
  f.dtype = dtype_of<T>();
  f.M = M, f.N = N, f.K = K;
  f.grad = dg.p, f.x = dx.p, f.vis = sel.v, f.grad_w = dgw.p;
  CHECK(linear_grad_weight(f, 0));
  CHECK(cudaDeviceSynchronize());
  std::vector<double> want(N * K, 0.0);
  std::vector<char> zero(N * K, 1);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        const double f2 = p.factor(n, k, p.row_task[m]);
        want[n * K + k] += to_d(g[m * N + n]) * to_d(x[m * K + k]) * f2;
        if (f2 != 0) zero[n * K + k] = 0;
      }
  compare("grad_weight", p, dgw.get(), want, &zero);
}

template <class T>
void test_mask_weight(int64_t N, int64_t K, Mode mode, bool soft) {
  Problem<T> p(1, N, K, mode, soft, false);
  const auto w = random_values<T>(N * K);
  DeviceArray<T> dw(w), out(N * K);
  DeviceSelection<T> sel(p);
  CHECK(mask_weight(dtype_of<T>(), N, K, dw.p, sel.v, out.p, false, 0));
  CHECK(cudaDeviceSynchronize());
  std::vector<double> want(N * K);
  for (int64_t i = 0; i < N * K; ++i) want[i] = to_d(w[i]) * p.factor(i / K, i % K, p.task);
  compare("mask_weight", p, out.get(), want);
}

void test_not_supported() {
  LinearForward f;
  f.M = 4, f.N = 4, f.K = 7;  // rows of 7 elements: no 16-byte loads
  const bool ok = linear_forward(f, nullptr, 0) == cudaErrorNotSupported;
  if (!ok) ++failures;
  std::printf("%-4s K %% 8 != 0 is refused (cudaErrorNotSupported)\n", ok ? "ok" : "FAIL");
}

template <class T>
void test_all() {
  const Mode modes[] = {Mode::dense, Mode::visible, Mode::trainable, Mode::mask, Mode::bits};
  for (Mode mode : modes) {
    test_forward<T>(1, 72, 104, mode);    // one row, K not a multiple of 32
    test_forward<T>(16, 130, 264, mode);  // N not a multiple of the block
    test_forward<T>(200, 136, 328, mode);
  }
  test_forward<T>(16, 64, 4096, Mode::visible, false, false, 1);  // split K, few rows
  test_forward<T>(100, 64, 2048, Mode::visible, false, false, 2);  // split K, tiles
  test_forward<T>(37, 96, 200, Mode::mask, true, false, 1);
  test_forward<T>(300, 96, 200, Mode::mask, true);
  test_forward<T>(64, 88, 96, Mode::visible, false, true, 2);  // mixed tasks, few rows
  test_forward<T>(250, 150, 96, Mode::visible, false, true);   // mixed tasks, tiles
  test_forward<T>(600, 520, 264, Mode::visible);              // 128x128 tiles
  for (Mode mode : {Mode::dense, Mode::visible, Mode::trainable, Mode::mask}) {
    test_grad_input<T>(3, 72, 104, mode);
    test_grad_input<T>(130, 200, 136, mode);
  }
  test_grad_input<T>(90, 48, 64, Mode::mask, true);
  test_grad_input<T>(90, 4096, 64, Mode::visible);  // split K
  test_grad_input<T>(150, 96, 88, Mode::visible, false, true);
  for (Mode mode : {Mode::dense, Mode::trainable, Mode::mask}) {
    test_grad_weight<T>(5, 72, 104, mode);
    test_grad_weight<T>(300, 136, 200, mode);
  }
  test_grad_weight<T>(70, 48, 64, Mode::mask, true);
  test_grad_weight<T>(150, 96, 88, Mode::trainable, false, true);
  test_grad_weight<T>(600, 256, 520, Mode::trainable, false, true);  // 128x128 tiles
  test_mask_weight<T>(24, 40, Mode::visible, false);
  test_mask_weight<T>(24, 44, Mode::bits, false);  // element-wise path
  test_mask_weight<T>(24, 40, Mode::mask, true);
}

// ------------------------------------------------------------------------------ timing

// Median time in microseconds of `f`, with L2 cleared before every run.
template <class F>
double median_us(F&& f) {
  static DeviceArray<char> flush(size_t(256) << 20);
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  std::vector<double> t;
  for (int i = 0; i < 30; ++i) {
    CHECK(cudaMemsetAsync(flush.p, i, flush.n));
    CHECK(cudaEventRecord(a));
    f();
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    if (i >= 5) t.push_back(ms * 1e3);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void bench() {
  using T = __nv_bfloat16;
  const int64_t N = 4096, K = 4096;
  for (int64_t M : {1, 16, 64}) {
    for (Mode mode : {Mode::dense, Mode::visible, Mode::bits}) {
      Problem<T> p(1, N, K, mode, false, false);
      DeviceArray<T> x(random_values<T>(M * K)), w(random_values<T>(N * K)), y(M * N);
      DeviceSelection<T> sel(p);
      LinearForward f;
      f.dtype = DType::bf16;
      f.M = M, f.N = N, f.K = K;
      f.x = x.p, f.w = w.p, f.vis = sel.v, f.y = y.p;
      DeviceArray<char> ws(linear_forward_workspace(f));
      const double us = median_us([&] { CHECK(linear_forward(f, ws.p, 0)); });
      const double mask_bytes = mode == Mode::visible ? N * K : mode == Mode::bits ? N * K / 8 : 0;
      const double bytes = 2.0 * (N * K + M * K + M * N) + mask_bytes;
      std::printf("bench forward bf16 M=%lld N=K=4096 mode=%d: %8.1f us  %6.0f GB/s\n", (long long)M, int(mode), us,
                  bytes / us * 1e-3);
    }
  }
}

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  if (argc > 1 && std::string(argv[1]) == "--bench") {
    bench();
    return 0;
  }
  test_not_supported();
  test_all<__nv_bfloat16>();
  test_all<__half>();
  std::printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
