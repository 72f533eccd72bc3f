// Native CPU kernels (kernels.h): the torch-free kernels of csrc/cpu on float32/float64, and
// the 16-bit types (bfloat16, float16).  Linear products mask weight panels in cache and multiply them with ATen's BLAS;
// convolutions mask a copy of the (small) conv weight and call ATen's convolution, per group
// of images that share a task.  16-bit types: few rows per task run the fused kernels on the
// 16-bit weight (x and y in fp32); more rows multiply a masked 16-bit copy with ATen's products
// (oneDNN, fp32 accumulation); weight and input gradients are computed in fp32 and rounded
// once.
#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>
#include <vector>

#include "csrc/cpu/blocks.h"
#include "csrc/cpu/epilogue.h"
#include "csrc/cpu/im2col.h"
#include "csrc/cpu/isa.h"
#include "csrc/cpu/linear.h"
#include "csrc/cpu/masking.h"
#include "csrc/cpu/parallel.h"
#include "csrc/cpu/task_groups.h"
#include "kernels.h"
#include "owner_cache.h"

namespace maskops {
namespace {

// The 1-bit visible map of a single-task selection (cached per owner version and task): the
// kernels read it instead of the owner, 1/8 of the traffic.  Undefined where the owner is read
// instead: mixed tasks, other modes, owners without a version counter, and rows (size(0) by the
// rest) of a length that is not a whole number of words (the map pads each row to words; the
// kernels index it as one run).
Tensor single_task_bits(const Selection& s) {
  if (s.mode != Mode::visible || s.mixed() || s.owner.dim() < 2 || s.owner.is_inference() ||
      s.owner.numel() == 0 || (s.owner.numel() / s.owner.size(0)) % 32 != 0)
    return Tensor();
  return cached_visible_bits(s.owner, s.task);
}

template <class T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

// The selection as the CPU kernels take it (pointers into the selection's tensors and `bits`,
// which the caller holds).
template <class T>
cpu::Vis<T> vis_of(const Selection& s, const Tensor& bits = Tensor()) {
  cpu::Vis<T> v;
  v.mode = s.mode;
  v.task = int(s.task);
  if (s.owner.defined()) v.owner = s.owner.data_ptr<uint8_t>();
  if (s.mask.defined()) {
    if (s.mask.scalar_type() == at::kByte)
      v.binary = s.mask.data_ptr<uint8_t>();
    else
      v.soft = ptr<T>(s.mask);
  }
  if (bits.defined()) v.bits = reinterpret_cast<const uint32_t*>(bits.data_ptr<int32_t>());
  return v;
}

// Rows grouped by task: from the routing for per-sample tasks, else one group.
cpu::TaskGroups groups_of(const Selection& s, int64_t rows, int64_t rows_per_sample) {
  if (!s.mixed()) return cpu::single_task(unsigned(s.task), rows);
  const Routing& r = s.routing;
  return cpu::group_rows(r.order.data_ptr<int64_t>(), r.offsets.data_ptr<int64_t>(),
                         r.order.numel(), rows_per_sample);
}

// The visible-block maps of the tasks of `groups` (visible mode; cached per owner version and
// task), with the tensors that hold them.  Owners without a version counter get none.
struct Blocks {
  cpu::BlockMaps maps;
  std::vector<Tensor> held;

  template <class Tasks>
  Blocks(const Selection& s, const Tasks& tasks) {
    if (s.mode != Mode::visible || s.owner.is_inference()) return;
    for (const auto& g : tasks) {
      const unsigned task = unsigned(g.task);
      if (task >= maps.by_task.size()) maps.by_task.resize(task + 1, nullptr);
      held.push_back(cached_visible_blocks(s.owner, task));
      maps.by_task[task] = held.back().data_ptr<uint8_t>();
    }
  }
  const cpu::BlockMaps* get() const { return held.empty() ? nullptr : &maps; }

  // The fraction of `task`'s blocks it cannot see at all.
  double hidden(unsigned task) const {
    const uint8_t* map = maps.of(task);
    if (map == nullptr) return 0;
    const Tensor& t = held.front();
    return double(std::count(map, map + t.numel(), uint8_t(cpu::kHidden))) / double(t.numel());
  }
};

// cpu::Gemm through ATen's matmul on views of the raw blocks (MKL/OpenBLAS underneath).
// Called from the kernels' worker threads, where BLAS runs single-threaded, or from the
// calling thread for one product over the whole weight, where it uses every thread.
template <class T>
void aten_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a,
               int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto view = [&](const T* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
    return trans ? at::from_blob(const_cast<T*>(p), {rows, cols}, {1, ld}, options)
                 : at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1}, options);
  };
  Tensor out = at::from_blob(c, {m, n}, {ldc, 1}, options);
  if (beta == T(0))
    at::mm_out(out, view(a, m, k, lda, trans_a), view(b, k, n, ldb, trans_b));
  else
    out.addmm_(view(a, m, k, lda, trans_a), view(b, k, n, ldb, trans_b), beta, 1);
}

// Runs fn(W{}) with W the 16-bit type of `t` (cpu::bf16 or cpu::f16).
template <class F>
void for_16bit_dtype(const Tensor& t, F&& fn) {
  if (t.scalar_type() == at::kBFloat16)
    fn(cpu::bf16{});
  else
    fn(cpu::f16{});
}

// Runs fn(T{}) with T the floating type of `t` (float or double).
template <class F>
void for_dtype(const Tensor& t, F&& fn) {
  if (t.scalar_type() == at::kDouble)
    fn(double{});
  else
    fn(float{});
}

// Images (or rows) grouped by task, as index tensors (undefined index: all in order).
// A task's images (or rows): those at `index` when the batch is reordered, else the run
// [begin, end) in place.
struct ImageGroup {
  int task;
  Tensor index;
  int64_t begin, end;
};

std::vector<ImageGroup> image_groups(const Selection& s, int64_t images, int64_t per_sample = 1) {
  const cpu::TaskGroups g = groups_of(s, images, per_sample);
  std::vector<ImageGroup> out;
  for (const auto& group : g.groups) {
    Tensor index;
    if (g.reordered())
      index = at::tensor(at::ArrayRef<int64_t>(g.order.data() + group.begin, group.size()),
                         at::kLong);
    out.push_back({int(group.task), index, group.begin, group.end});
  }
  return out;
}

Tensor rows_of(const Tensor& t, const ImageGroup& g) {
  return g.index.defined() ? t.index_select(0, g.index) : t.narrow(0, g.begin, g.end - g.begin);
}

bool is_16bit(const Tensor& t) {
  return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
}

// Runs fn(T{}) with T the type of weight `w`: a 16-bit type, float or double.
template <class F>
void for_weight_dtype(const Tensor& w, F&& fn) {
  if (is_16bit(w))
    for_16bit_dtype(w, fn);
  else
    for_dtype(w, fn);
}

// A tensor shaped and laid out like `t` (dense) in memory this thread reuses from call to
// call: a fresh weight-sized allocation page-faults on every call (a 32 MB copy: 16 ms, as
// long as the bfloat16 product it feeds, M = 256, N = K = 4096).  Valid until the thread's
// next call.
Tensor reused_like(const Tensor& t) {
  thread_local Tensor buffer;
  const int64_t bytes = t.numel() * t.element_size();
  if (!buffer.defined() || buffer.numel() < bytes) buffer = at::empty({bytes}, t.options().dtype(at::kByte));
  return at::from_blob(buffer.data_ptr(), t.sizes(), t.strides(), t.options());
}

// Rows [n0, n0 + rows) (along dim 0) of the selection's weight for `task`: a view of the
// weight when dense, else a masked copy in the weight's layout, in this thread's reused buffer
// (valid until its next call).
Tensor masked_rows(const Tensor& weight, const Selection& s, int task, int64_t n0, int64_t rows) {
  const Tensor panel = rows == weight.size(0) ? weight : weight.narrow(0, n0, rows);
  if (s.mode == Mode::dense) return panel;
  Tensor out = reused_like(panel);
  const Tensor bits = single_task_bits(s);
  const int64_t begin = n0 * weight.stride(0);
  for_weight_dtype(weight, [&](auto zero) {
    using T = decltype(zero);
    cpu::mask_array<T>(ptr<T>(weight) + begin, vis_of<T>(s, bits).at(begin), unsigned(task),
                       panel.numel(), ptr<T>(out));
  });
  return out;
}

// The selection's whole weight for `task`, as masked_rows gives it.
Tensor masked_weight(const Tensor& weight, const Selection& s, int task) {
  return masked_rows(weight, s, task, 0, weight.size(0));
}

// The masked weight of a convolution over `images`, laid out as oneDNN runs fastest: with a
// channels_last input, a channels_last weight written in this thread's reused buffer.  oneDNN
// takes a channels_last input with an (out, in, kh, kw)-contiguous weight on a slow path, and a
// weight in fresh memory costs it page faults (AMD EPYC, AVX-512, 2 threads, 3x3, C = 512,
// 7x7, batch 1: 1.6 ms with a channels_last weight it has seen, 5.5 ms with the
// (out, in, kh, kw) one, 5.2 ms with a fresh channels_last copy of it per call).
// A channels_last weight (a 1x1 one is both) is masked as it lies.
Tensor conv_weight(const Tensor& weight, const Selection& s, int task, const Tensor& images) {
  if (images.suggest_memory_format() != at::MemoryFormat::ChannelsLast ||
      weight.is_contiguous(at::MemoryFormat::ChannelsLast))
    return masked_weight(weight, s, task);
  const int64_t O = weight.size(0), I = weight.size(1), H = weight.size(2), W = weight.size(3);
  const Tensor out = reused_like(weight).view({O, H, W, I}).permute({0, 3, 1, 2});
  const Tensor bits = single_task_bits(s);
  for_weight_dtype(weight, [&](auto zero) {
    using T = decltype(zero);
    cpu::mask_array_channels_last<T>(ptr<T>(weight), vis_of<T>(s, bits), unsigned(task), O, I,
                                     H * W, ptr<T>(out));
  });
  return out;
}

// The layout a conv selection's owner or mask is dense in (contiguous when it has neither).
at::MemoryFormat selection_format(const Selection& s) {
  const Tensor& t = s.owner.defined() ? s.owner : s.mask;
  return t.defined() && channels_last_only(t) ? at::MemoryFormat::ChannelsLast
                                              : at::MemoryFormat::Contiguous;
}

// The selection of a 16-bit call as the fp32 kernels take it (a floating mask in fp32).
Selection in_fp32(const Selection& s) {
  Selection f = s;
  if (s.mask.defined() && s.mask.is_floating_point()) f.mask = s.mask.to(at::kFloat);
  return f;
}

// y * m, exactly 0 where m is 0 (cpu::masked_output), for 16-bit outputs.
Tensor masked_output(const Tensor& y, const Tensor& m) {
  return at::where(m == 0, at::zeros({}, y.options()), y * m);
}

// Per-group results written back into a batch-sized output at their images' positions.
Tensor assemble(std::vector<std::pair<ImageGroup, Tensor>>& parts, int64_t batch) {
  if (parts.size() == 1 && !parts[0].first.index.defined()) return parts[0].second;
  const Tensor& first = parts[0].second;
  auto sizes = first.sizes().vec();
  sizes[0] = batch;
  const auto format = first.suggest_memory_format();
  Tensor out = at::empty(sizes, first.options().memory_format(format));
  // Each image is one contiguous run in either layout: copied whole (index_copy_ took 3x as
  // long for 449 8x8 images of 16 channels in 5 groups).
  const int64_t bytes = out[0].numel() * out.element_size();
  char* dst = static_cast<char*>(out.data_ptr());
  for (auto& [group, part] : parts) {
    const Tensor src = part.contiguous(format);
    const char* from = static_cast<const char*>(src.data_ptr());
    if (!group.index.defined()) {  // a run in place
      std::memcpy(dst + group.begin * bytes, from, src.size(0) * bytes);
      continue;
    }
    const int64_t* index = group.index.data_ptr<int64_t>();
    for (int64_t i = 0; i < src.size(0); ++i) std::memcpy(dst + index[i] * bytes, from + i * bytes, bytes);
  }
  return out;
}

// Whether every value of `t` is finite (read on the host: CPU tensors only).
bool all_finite(const Tensor& t) {
  const Tensor c = t.contiguous();
  bool finite = true;
  for_dtype(c, [&](auto zero) {
    using T = decltype(zero);
    const T* p = c.data_ptr<T>();
    T sum = 0;  // NaN exactly when some value is NaN or infinite
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < c.numel(); ++i) sum += p[i] * T(0);
    finite = sum == sum;
  });
  return finite;
}

// A quarter of a task's blocks hidden or more: a convolution runs as products of the visible
// blocks (block_conv) instead of oneDNN's convolution of the whole masked weight.
constexpr double kBlockConvHidden = 0.25;
// Narrower pixel chunks make block_conv's products too thin to run at the GEMM's speed.
constexpr int64_t kMinChunk = 128;

// conv2d (groups 1) of images `x` with the blocks of `weight` (viewed as (Cout, Cin*kh*kw))
// that task `task` sees: the input unfolded into the columns the visible blocks need (a 1x1
// convolution with stride 1 and no padding reads the input as it is), then, for every 32
// output channels, one product per run of visible blocks -- with the weight itself where the
// run is fully visible, a masked copy where partly.  Block rows run in parallel.
Tensor block_conv(const Tensor& x_in, const Tensor& weight, const Selection& s, unsigned task,
                  const uint8_t* map, const OptTensor& bias, const ConvGeometry& g) {
  const Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), Cout = weight.size(0), K = weight.numel() / std::max<int64_t>(Cout, 1);
  const cpu::ConvShape shape{x.size(1), x.size(2), x.size(3), weight.size(2), weight.size(3),
                             {g.stride[0], g.stride[1]}, {g.padding[0], g.padding[1]},
                             {g.dilation[0], g.dilation[1]}};
  const int64_t L = shape.out_height() * shape.out_width();
  const bool pointwise = shape.kh == 1 && shape.kw == 1 && g.stride == std::array<int64_t, 2>{1, 1} &&
                         g.padding == std::array<int64_t, 2>{0, 0};
  const int64_t block_rows = cpu::block_grid(Cout, cpu::kBlockRows);
  const int64_t block_cols = cpu::block_grid(K, cpu::kBlockCols);
  Tensor y = at::empty({B, Cout, L}, x.options());
  for_dtype(x, [&](auto zero) {
    using T = decltype(zero);
    // The products of each block row: a run of columns and its weights (row-major, leading
    // dimension ld): the weight itself, or a masked copy held in `copies`.
    struct Product {
      cpu::KRange range;
      const T* w;
      int64_t ld;
    };
    std::vector<std::vector<Product>> products(block_rows);
    std::vector<Tensor> copies;
    std::vector<uint8_t> needed(K, 0);
    const T* w = weight.data_ptr<T>();
    for (int64_t br = 0; br < block_rows; ++br) {
      const int64_t r0 = br * cpu::kBlockRows, rows = std::min(cpu::kBlockRows, Cout - r0);
      for (const cpu::KRange& range : cpu::visible_ranges(map + br * block_cols, K)) {
        const int64_t len = range.end - range.begin;
        Product p{range, w + r0 * K + range.begin, K};
        if (!range.full) {
          copies.push_back(at::empty({rows, len}, weight.options()));
          T* masked = copies.back().data_ptr<T>();
          cpu::mask_block<T>(p.w, K, vis_of<T>(s).at(r0 * K + range.begin), K, task, rows, len, masked, len);
          p = {range, masked, len};
        }
        std::fill(needed.begin() + range.begin, needed.begin() + range.end, uint8_t(1));
        products[br].push_back(p);
      }
    }
    Tensor unfolded = pointwise ? Tensor() : at::empty({K, L}, x.options());
    for (int64_t b = 0; b < B; ++b) {
      const T* image = x.data_ptr<T>() + b * x[0].numel();
      const T* columns = image;
      if (!pointwise) {
        cpu::im2col<T>(image, shape, needed.data(), unfolded.data_ptr<T>());
        columns = unfolded.data_ptr<T>();
      }
      T* out = y.data_ptr<T>() + b * Cout * L;
      const int threads = cpu::threads_for(Cout * K * L / 4);
      // Block rows differ in work and may be fewer than the threads: each also splits into
      // pixel chunks (at least 4 items per thread, chunks of at least kMinChunk pixels).
      const int64_t chunks = std::max<int64_t>(
          1, std::min(L / kMinChunk, (4 * threads + block_rows - 1) / block_rows));
      const int64_t chunk = (L + chunks - 1) / chunks;
      cpu::parallel_for(block_rows * chunks, threads, cpu::Schedule::dynamic, [&](int64_t item) {
        const int64_t br = item / chunks, p0 = item % chunks * chunk, width = std::min(chunk, L - p0);
        const int64_t r0 = br * cpu::kBlockRows, rows = std::min(cpu::kBlockRows, Cout - r0);
        T* yb = out + r0 * L + p0;
        if (products[br].empty()) {
          for (int64_t r = 0; r < rows; ++r) std::fill(yb + r * L, yb + r * L + width, T(0));
        }
        T beta = 0;
        for (const Product& p : products[br]) {
          aten_gemm<T>(false, false, rows, width, p.range.end - p.range.begin, p.w, p.ld,
                       columns + p.range.begin * L + p0, L, beta, yb, L);
          beta = 1;
        }
      });
    }
  });
  if (bias.has_value()) y.add_(bias->view({1, Cout, 1}));
  return y.view({B, Cout, shape.out_height(), shape.out_width()});
}

// Convolutions of few pixels with a 1x1 kernel, stride 1 and no padding, over channels_last
// images: a linear layer over the pixels (rows of the images' memory), which masks the weight
// on load or in panels that stay in cache instead of in a whole copy per call.  Measured (AMD
// EPYC, AVX-512, 2 threads, batch 1, 64 MB of distinct weights per shape so that each call
// reads its weight from memory; conv time / linear time): at 49 pixels 1.26x (64x256),
// 1.42x (256x64), 0.87x (256x1024), 1.09x (1024x256), 1.77x (512x2048), 1.22x (2048x512),
// 1.50x (96x576); at 64 pixels 0.94-1.58x; at 100 pixels 0.55-1.57x, large weights losing.
// torchvision resnet50, batch 1, 224x224: 0.822x -> 0.864x of the cached copies.
constexpr int64_t kPixelRows = 64;

bool pixels_as_rows(const Tensor& x, const Tensor& weight, const ConvGeometry& g) {
  return g.groups == 1 && weight.size(2) == 1 && weight.size(3) == 1 &&
         g.stride == std::array<int64_t, 2>{1, 1} && g.padding == std::array<int64_t, 2>{0, 0} &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast) &&
         x.size(0) * x.size(2) * x.size(3) <= kPixelRows;
}

// A linear backward product of grad (M, N) and `operand` into a new `shape` result:
// run(grad, M, N, operand, K, visibility, groups, out, gemm) with K = operand.size(1).
template <class Run>
Tensor linear_backward(const Tensor& grad, const Tensor& operand, const Selection& s,
                       int64_t rows_per_sample, at::IntArrayRef shape, Run run) {
  const int64_t M = grad.size(0), N = grad.size(1), K = operand.size(1);
  const cpu::TaskGroups groups = groups_of(s, M, rows_per_sample);
  const Tensor bits = single_task_bits(s);
  Tensor out = at::empty(shape, grad.options());
  for_dtype(grad, [&](auto zero) {
    using T = decltype(zero);
    run(grad.data_ptr<T>(), M, N, operand.data_ptr<T>(), K, vis_of<T>(s, bits), groups,
        out.data_ptr<T>(), aten_gemm<T>);
  });
  return out;
}

// bias and out_mask (undefined: none) as the kernels' epilogue.
template <class T>
cpu::Epilogue<T> epilogue_of(const Tensor& bias, const Tensor& out_mask, int64_t N) {
  cpu::Epilogue<T> epilogue;
  if (bias.defined()) epilogue.bias = bias.data_ptr<T>();
  if (out_mask.defined()) {
    epilogue.out_mask = out_mask.data_ptr<T>();
    epilogue.out_mask_row_stride = out_mask.dim() == 2 ? N : 0;
  }
  return epilogue;
}

// Weight panels of 16-bit linear products beyond the fused kernels: a panel is masked into a
// reused buffer that stays in the last-level cache, where the product reads it, instead of a
// whole masked copy going to memory and back.  Measured (AMD EPYC, 32 MB L3, bfloat16,
// N = K = 4096, 2/3 visible, 2 threads, medians, runs alternated): M = 32: 3.6-3.9 ms with a
// whole copy, 2.4-2.7 ms in 8 MB panels (1.9-2.4 ms on a cached copy); M = 17: 3.0-3.3 ->
// 1.8-2.0 ms; M = 256: 10.4-12.7 -> 10.4 ms.  4 MB panels ran the same, 16 MB ones slower.
constexpr int64_t kHalfPanelBytes = 8 << 20;

// A 16-bit linear forward with more rows than the fused kernels take: each task group
// multiplies a masked 16-bit copy of the weight with ATen (oneDNN's 16-bit product).  fp16 on
// a CPU without fp16 arithmetic widens the copy and multiplies in fp32: ATen's fp16 product
// ran 3x slower there (AMD EPYC with AVX-512 but no FP16, M = 256, N = K = 4096: 320 ms, fp32
// 110 ms).
Tensor half_products(const Tensor& x, const Tensor& weight, const Selection& s,
                     int64_t rows_per_sample, const OptTensor& bias, const OptTensor& out_mask) {
  const bool widen = x.scalar_type() == at::kHalf && !cpu::cpu_has_fp16_arithmetic();
  const auto as_product = [&](const Tensor& t) { return widen ? t.to(at::kFloat) : t; };
  const OptTensor b = bias.has_value() ? OptTensor(as_product(*bias)) : std::nullopt;
  const int64_t N = weight.size(0), K = weight.size(1);
  const int64_t panel = std::max<int64_t>(1, kHalfPanelBytes / (K * weight.element_size()));
  std::vector<std::pair<ImageGroup, Tensor>> parts;
  for (const ImageGroup& group : image_groups(s, x.size(0), rows_per_sample)) {
    const Tensor xg = as_product(rows_of(x, group));
    if (panel >= N) {
      parts.emplace_back(group, at::linear(xg, as_product(masked_weight(weight, s, group.task)), b));
      continue;
    }
    Tensor yg = at::empty({xg.size(0), N}, xg.options());
    for (int64_t n0 = 0; n0 < N; n0 += panel) {
      const int64_t rows = std::min(panel, N - n0);
      yg.narrow(1, n0, rows)
          .copy_(at::linear(xg, as_product(masked_rows(weight, s, group.task, n0, rows)),
                            b.has_value() ? OptTensor(b->narrow(0, n0, rows)) : std::nullopt));
    }
    parts.emplace_back(group, yg);
  }
  Tensor y = assemble(parts, x.size(0));
  if (out_mask.has_value()) y = masked_output(y, as_product(*out_mask));
  return y.to(x.scalar_type());
}

class CpuKernels final : public Kernels {
 public:
  Tensor linear_forward(const Tensor& x, const Tensor& weight, const Selection& s,
                        int64_t rows_per_sample, const OptTensor& bias,
                        const OptTensor& out_mask) const override {
    const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
    const cpu::TaskGroups groups = groups_of(s, M, rows_per_sample);
    if (is_16bit(x) && !cpu::all_fused(groups))
      return half_products(x, weight, s, rows_per_sample, bias, out_mask);
    const Blocks blocks(s, groups.groups);
    const Tensor bits = single_task_bits(s);
    if (is_16bit(x)) {
      const Tensor xf = x.to(at::kFloat), bias_f = bias.has_value() ? bias->to(at::kFloat) : Tensor(),
                   mask_f = out_mask.has_value() ? out_mask->to(at::kFloat) : Tensor();
      Tensor y = at::empty({M, N}, xf.options());
      for_16bit_dtype(x, [&](auto zero) {
        using W = decltype(zero);
        cpu::linear_forward_fused<W>(xf.data_ptr<float>(), M, K, ptr<W>(weight), N,
                                     vis_of<W>(s, bits), groups, blocks.get(),
                                     epilogue_of<float>(bias_f, mask_f, N), y.data_ptr<float>());
      });
      return y.to(x.scalar_type());
    }
    Tensor y = at::empty({M, N}, x.options());
    for_dtype(x, [&](auto zero) {
      using T = decltype(zero);
      cpu::linear_forward<T>(x.data_ptr<T>(), M, K, weight.data_ptr<T>(), N, vis_of<T>(s, bits), groups,
                             blocks.get(), epilogue_of<T>(bias.value_or(Tensor()),
                                                          out_mask.value_or(Tensor()), N),
                             y.data_ptr<T>(), aten_gemm<T>);
    });
    return y;
  }

  Tensor linear_grad_input(const Tensor& grad, const Tensor& weight, const Selection& s,
                           int64_t rows_per_sample) const override {
    if (is_16bit(grad))
      return linear_grad_input(grad.to(at::kFloat), weight.to(at::kFloat), in_fp32(s), rows_per_sample)
          .to(grad.scalar_type());
    return linear_backward(grad, weight, s, rows_per_sample, {grad.size(0), weight.size(1)},
                           [](auto&&... args) { cpu::linear_grad_input(args...); });
  }

  Tensor linear_grad_weight(const Tensor& grad, const Tensor& x, const Selection& s,
                            int64_t rows_per_sample) const override {
    if (is_16bit(grad))
      return linear_grad_weight(grad.to(at::kFloat), x.to(at::kFloat), in_fp32(s), rows_per_sample)
          .to(grad.scalar_type());
    return linear_backward(grad, x, s, rows_per_sample, {grad.size(1), x.size(1)},
                           [](auto&&... args) { cpu::linear_grad_weight(args...); });
  }

  Tensor conv2d_forward(const Tensor& x, const Tensor& weight, const Selection& s,
                        const OptTensor& bias, const OptTensor& out_mask,
                        const ConvGeometry& g) const override {
    if (pixels_as_rows(x, weight, g)) {
      const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), N = weight.size(0);
      const OptTensor m = out_mask.has_value() && out_mask->dim() == 2
                              ? OptTensor(out_mask->repeat_interleave(H * W, 0))
                              : out_mask;
      return linear_forward(x.permute({0, 2, 3, 1}).reshape({B * H * W, C}), weight.view({N, C}), s,
                            H * W, bias, m)
          .view({B, H, W, N})
          .permute({0, 3, 1, 2});
    }
    const std::vector<ImageGroup> groups = image_groups(s, x.size(0));
    const Blocks blocks(s, groups);
    std::vector<std::pair<ImageGroup, Tensor>> parts;
    for (const ImageGroup& group : groups) {
      const Tensor images = rows_of(x, group);
      const unsigned task = unsigned(group.task);
      // Skipped blocks would drop what NaN/inf inputs give there in dense math: those calls
      // take the whole convolution.
      const bool skip = g.groups == 1 && !is_16bit(x) && blocks.hidden(task) >= kBlockConvHidden &&
                        all_finite(images);
      // block_conv reads the weight in (out, in, kh, kw) order.
      parts.emplace_back(group, skip ? block_conv(images, weight.contiguous(),
                                                  s.in_format(at::MemoryFormat::Contiguous), task,
                                                  blocks.maps.of(task), bias, g)
                                     : at::convolution(images, conv_weight(weight, s, group.task, images),
                                                       bias, g.stride, g.padding, g.dilation, false,
                                                       {0, 0}, g.groups));
    }
    Tensor y = assemble(parts, x.size(0)).contiguous(x.suggest_memory_format());
    if (out_mask.has_value() && is_16bit(y)) {
      const Tensor m = out_mask->dim() == 2 ? out_mask->view({y.size(0), y.size(1), 1, 1})
                                             : out_mask->view({1, y.size(1), 1, 1});
      y = masked_output(y, m).contiguous(x.suggest_memory_format());
    } else if (out_mask.has_value()) {
      for_dtype(y, [&](auto zero) {
        using T = decltype(zero);
        // H and W merge into one pixel axis in both layouts.
        cpu::scale_channels<T>(y.data_ptr<T>(), y.size(0), y.size(1), y.size(2) * y.size(3),
                               y.stride(0), y.stride(1), y.stride(3), out_mask->data_ptr<T>(),
                               out_mask->dim() == 2 ? y.size(1) : 0);
      });
    }
    return y;
  }

  bool reads_channels_last_weights() const override { return true; }

  Tensor conv2d_grad_input(const Tensor& grad, const Tensor& weight, const Selection& s,
                           at::IntArrayRef input_shape, const ConvGeometry& g) const override {
    std::vector<std::pair<ImageGroup, Tensor>> parts;
    for (const ImageGroup& group : image_groups(s, grad.size(0))) {
      const Tensor grad_g = rows_of(grad, group);
      auto shape = input_shape.vec();
      shape[0] = grad_g.size(0);
      // Only the input's shape matters for the input gradient.
      const Tensor input = grad.new_empty({1}).expand(shape);
      parts.emplace_back(group, std::get<0>(at::convolution_backward(
                                    grad_g, input, conv_weight(weight, s, group.task, grad_g),
                                    std::nullopt, g.stride, g.padding, g.dilation, false, {0, 0},
                                    g.groups, {true, false, false})));
    }
    return assemble(parts, grad.size(0)).contiguous(grad.suggest_memory_format());
  }

  Tensor conv2d_grad_weight(const Tensor& grad, const Tensor& x, const Selection& s,
                            at::IntArrayRef weight_shape, const ConvGeometry& g) const override {
    if (is_16bit(grad))
      return conv2d_grad_weight(grad.to(at::kFloat), x.to(at::kFloat), in_fp32(s), weight_shape, g)
          .to(grad.scalar_type());
    // The gradient is masked in the selection's layout, where the owner and the mask are dense.
    const at::MemoryFormat format = selection_format(s);
    Tensor gw = at::empty(weight_shape, x.options(), format).zero_();
    const Tensor weight_like = x.new_empty({1}).expand(weight_shape);
    bool written = false;
    for (const ImageGroup& group : image_groups(s, x.size(0))) {
      for_dtype(gw, [&](auto zero) {
        using T = decltype(zero);
        const cpu::Vis<T> v = vis_of<T>(s);
        const unsigned t = unsigned(group.task);
        // Frozen for this task: nothing to compute.
        if (!cpu::any_selected<T>(v, gw.numel(), t, 1, gw.numel())) return;
        const Tensor part = std::get<1>(at::convolution_backward(
                                rows_of(grad, group), rows_of(x, group), weight_like,
                                std::nullopt, g.stride, g.padding, g.dilation, false, {0, 0},
                                g.groups, {false, true, false}))
                                .contiguous(format);
        if (!written)
          cpu::mask_array<T>(part.data_ptr<T>(), v, t, gw.numel(), gw.data_ptr<T>());
        else
          cpu::add_masked_array<T>(part.data_ptr<T>(), v, t, gw.numel(), gw.data_ptr<T>());
        written = true;
      });
    }
    return gw.contiguous();
  }
};

bool cpu_supports(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 ||
         dtype == at::kHalf;
}

const CpuKernels cpu_kernels;
const RegisterNativeKernels registration(c10::DeviceType::CPU, {&cpu_kernels, cpu_supports});

}  // namespace
}  // namespace maskops
