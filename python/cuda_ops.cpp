// CUDA implementations of the maskops native ops: check tensors, take the current stream,
// call the kernels in csrc/cuda.
//
// Linear float16/bfloat16 runs the tensor-core kernels, which mask the weight in registers,
// where they are the faster path (see forward_kernels).  Everything else (many rows of one
// task, float32/float64, rows whose length is not a multiple of 8, every convolution) runs
// on a masked copy of the weight made by a csrc/cuda kernel, handed to ATen's cuBLAS / cuDNN
// calls, one call per task present in the batch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "../csrc/cuda/launch.h"

namespace {

namespace mc = maskops::cuda;
using at::Tensor;
using OptTensor = std::optional<Tensor>;

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "maskops CUDA ", what, " failed: ", cudaGetErrorString(err));
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

mc::DType dtype_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return mc::DType::f16;
    case at::kBFloat16: return mc::DType::bf16;
    case at::kFloat: return mc::DType::f32;
    case at::kDouble: return mc::DType::f64;
    default: TORCH_CHECK(false, "maskops CUDA: unsupported dtype ", t.scalar_type());
  }
}

// The selection of weights, with the contiguous tensors its pointers refer to.
struct Selection {
  mc::Vis vis;
  Tensor owner, mask, row_task;

  // The same selection for one task, all rows.
  mc::Vis for_task(int64_t task) const {
    mc::Vis v = vis;
    v.task = int(task);
    v.row_task = nullptr;
    return v;
  }
};

// The weight a selection applies to (or that of its gradient).
struct WeightInfo {
  int64_t numel;
  at::Device device;
  at::ScalarType dtype;
};

WeightInfo info(const Tensor& w) { return {w.numel(), w.device(), w.scalar_type()}; }

WeightInfo info(at::IntArrayRef shape, const Tensor& like) {
  return {c10::multiply_integers(shape), like.device(), like.scalar_type()};
}

Selection selection(const WeightInfo& w, int64_t mode, const OptTensor& owner, const OptTensor& mask, int64_t task,
                    const OptTensor& row_task, int64_t rows) {
  TORCH_CHECK(mode >= 0 && mode <= 3, "maskops: mode must be 0 (dense), 1 (visible), 2 (trainable) or 3 (mask), got ",
              mode);
  TORCH_CHECK(task >= 0 && task <= 255, "maskops: task must be in 0..255, got ", task);
  Selection s;
  s.vis.mode = static_cast<mc::Mode>(mode);
  s.vis.task = int(task);
  if (s.vis.per_task()) {
    TORCH_CHECK(owner.has_value(), "maskops: owner is required for mode ", mode);
    TORCH_CHECK(owner->scalar_type() == at::kByte && owner->numel() == w.numel && owner->device() == w.device,
                "maskops: owner must be a uint8 tensor shaped like weight on its device");
    s.owner = owner->contiguous();
    s.vis.owner = s.owner.data_ptr<uint8_t>();
    if (row_task.has_value()) {
      TORCH_CHECK(row_task->scalar_type() == at::kInt && row_task->numel() == rows &&
                      row_task->device() == w.device,
                  "maskops: row_task must be an int32 tensor with one entry per row on weight's device");
      s.row_task = row_task->contiguous();
      s.vis.row_task = s.row_task.data_ptr<int32_t>();
    }
  } else if (s.vis.mode == mc::Mode::mask) {
    TORCH_CHECK(mask.has_value(), "maskops: mask is required for mode 3");
    TORCH_CHECK((mask->scalar_type() == at::kByte || mask->scalar_type() == w.dtype) &&
                    mask->numel() == w.numel && mask->device() == w.device,
                "maskops: mask must be uint8 or of weight's dtype, shaped like weight, on its device");
    s.mask = mask->contiguous();
    s.vis.mask = s.mask.data_ptr();
    s.vis.soft = s.mask.scalar_type() != at::kByte;
  }
  return s;
}

// w where `vis` selects, elsewhere 0 (or the old `into` where given).
Tensor masked(const Tensor& w, const mc::Vis& vis, Tensor into = {}) {
  const bool keep_others = into.defined();
  Tensor out = keep_others ? into : at::empty_like(w, at::MemoryFormat::Contiguous);
  const int64_t rows = w.size(0), cols = rows ? w.numel() / rows : 0;
  check_cuda(mc::mask_weight(dtype_of(w), rows, cols, w.data_ptr(), vis, out.data_ptr(), keep_others, stream()),
             "mask_weight");
  return out;
}

// Per-task groups of rows: (task, index of its rows), or one group (task, undefined) for all rows.
std::vector<std::pair<int64_t, Tensor>> task_groups(const Selection& s) {
  if (!s.row_task.defined() || !s.vis.per_task()) return {{s.vis.task, Tensor()}};
  std::vector<std::pair<int64_t, Tensor>> groups;
  const Tensor tasks = std::get<0>(at::_unique(s.row_task)).cpu();
  for (int64_t i = 0; i < tasks.numel(); ++i) {
    const int64_t t = tasks[i].item<int64_t>();
    groups.emplace_back(t, (s.row_task == t).nonzero().flatten());
  }
  return groups;
}

// out rows = run(rows of task t, t) for every group.
Tensor by_rows(const Selection& s, const Tensor& rows, const std::function<Tensor(const Tensor&, int64_t)>& run) {
  Tensor out;
  for (const auto& [task, index] : task_groups(s)) {
    if (!index.defined()) return run(rows, task);
    const Tensor part = run(rows.index_select(0, index), task);
    if (!out.defined()) {
      std::vector<int64_t> sizes = part.sizes().vec();
      sizes[0] = rows.size(0);
      out = at::empty(sizes, part.options());
    }
    out.index_copy_(0, index, part);
  }
  return out.defined() ? out : run(rows, s.vis.task);  // no rows
}

// Sum over groups of mask(run(rows of task t), t): weight gradients.
Tensor summed(const Selection& s, const Tensor& a, const Tensor& b,
              const std::function<Tensor(const Tensor&, const Tensor&)>& run) {
  Tensor total;
  for (const auto& [task, index] : task_groups(s)) {
    Tensor part = index.defined() ? run(a.index_select(0, index), b.index_select(0, index)) : run(a, b);
    part = part.contiguous();
    Tensor kept = s.vis.mode == mc::Mode::dense ? part : masked(part, s.for_task(task));
    total = total.defined() ? total + kept : kept;
  }
  return total;
}

Tensor effective(const Tensor& w, const Selection& s, int64_t task) {
  return s.vis.mode == mc::Mode::dense ? w : masked(w, s.for_task(task));
}

Tensor workspace(size_t bytes, const Tensor& like) {
  return at::empty({int64_t(bytes)}, like.options().dtype(at::kByte));
}

bool tensor_cores(const Tensor& x) {
  return x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
}

// Where the masked tensor-core kernels run; elsewhere cuBLAS on a masked copy of the weight
// (or a masked copy of cuBLAS's weight gradient) was faster on an H100 (bf16, 4096 x 4096):
//  - a forward over few rows, where the kernel streams weight and mask once;
//  - a batch that mixes tasks, which the kernels serve in one launch with no host sync.
// The tiled kernel (mma.sync, register-staged) runs far below cuBLAS for many rows, and the
// backward kernels were slower than the copy + cuBLAS even for 16 rows.
constexpr int64_t kFewRows = 64;
bool mixed_tasks(const Selection& s) { return s.row_task.defined() && s.vis.per_task(); }
bool forward_kernels(const Tensor& x, const Selection& s) {
  return tensor_cores(x) && (x.size(0) <= kFewRows || mixed_tasks(s));
}
bool backward_kernels(const Tensor& g, const Selection& s) { return tensor_cores(g) && mixed_tasks(s); }

void check_linear(const Tensor& a, const Tensor& w, const char* a_name) {
  TORCH_CHECK(a.is_cuda() && w.device() == a.device(), "maskops: ", a_name, " and weight must be on one CUDA device");
  TORCH_CHECK(a.dim() == 2 && w.dim() == 2, "maskops: ", a_name, " and weight must be 2-D");
  TORCH_CHECK(a.scalar_type() == w.scalar_type(), "maskops: ", a_name, " and weight must have one dtype");
}

Tensor apply_bias_and_out_mask(Tensor y, const OptTensor& bias, const OptTensor& out_mask, bool conv) {
  if (bias.has_value()) y = y + (conv ? bias->reshape({1, -1, 1, 1}) : *bias);
  if (out_mask.has_value()) {
    y = y * (conv ? out_mask->reshape({out_mask->dim() == 1 ? 1 : out_mask->size(0), -1, 1, 1}) : *out_mask);
  }
  return y;
}

// ------------------------------------------------------------------------------ linear

Tensor run_linear_forward(const Tensor& x_in, const Tensor& w_in, const Selection& s, const mc::Vis& vis,
                          const OptTensor& bias, const OptTensor& out_mask) {
  const Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const int64_t M = x.size(0), N = w.size(0), K = w.size(1);
  TORCH_CHECK(x.size(1) == K, "maskops: x has ", x.size(1), " features, weight expects ", K);
  Tensor y = at::empty({M, N}, x.options());
  if (forward_kernels(x, s)) {
    const Tensor b = bias.has_value() ? bias->contiguous() : Tensor();
    const Tensor om = out_mask.has_value() ? out_mask->contiguous() : Tensor();
    TORCH_CHECK(!b.defined() || b.numel() == N, "maskops: bias must have ", N, " elements");
    TORCH_CHECK(!om.defined() || om.numel() == N || om.numel() == M * N, "maskops: out_mask must be (N) or (M, N)");
    mc::LinearForward f;
    f.dtype = dtype_of(x);
    f.M = M, f.N = N, f.K = K;
    f.x = x.data_ptr(), f.w = w.data_ptr(), f.vis = vis;
    f.bias = b.defined() ? b.data_ptr() : nullptr;
    f.out_mask = om.defined() ? om.data_ptr() : nullptr;
    f.out_mask_per_row = om.defined() && om.dim() == 2;
    f.y = y.data_ptr();
    const Tensor ws = workspace(mc::linear_forward_workspace(f), x);
    const cudaError_t err = mc::linear_forward(f, ws.data_ptr(), stream());
    if (err != cudaErrorNotSupported) {
      check_cuda(err, "linear_forward");
      return y;
    }
  }
  y = by_rows(s, x, [&](const Tensor& rows, int64_t t) {
    const Tensor wt = effective(w, s, t).t();
    return bias.has_value() ? at::addmm(*bias, rows, wt) : at::matmul(rows, wt);  // cuBLAS adds the bias
  });
  return out_mask.has_value() ? y.mul_(*out_mask) : y;
}

Tensor linear_forward(const Tensor& x, const Tensor& weight, int64_t mode, const OptTensor& owner,
                      const OptTensor& mask, int64_t task, const OptTensor& row_task, const OptTensor& bias,
                      const OptTensor& out_mask) {
  check_linear(x, weight, "x");
  c10::cuda::CUDAGuard guard(x.device());
  const Selection s = selection(info(weight), mode, owner, mask, task, row_task, x.size(0));
  return run_linear_forward(x, weight, s, s.vis, bias, out_mask);
}

// Forward for one task with its packed visible map (int32 (N, ceil(K / 32)); bit j of word
// [n, w] set where weight (n, 32 w + j) is visible).
Tensor linear_forward_bits(const Tensor& x, const Tensor& weight, const Tensor& bits, const OptTensor& bias,
                           const OptTensor& out_mask) {
  check_linear(x, weight, "x");
  c10::cuda::CUDAGuard guard(x.device());
  TORCH_CHECK(bits.scalar_type() == at::kInt && bits.dim() == 2 && bits.size(0) == weight.size(0) &&
                  bits.size(1) == (weight.size(1) + 31) / 32 && bits.device() == weight.device(),
              "maskops: bits must be int32 (out_features, ceil(in_features / 32)) on weight's device");
  Selection s;
  s.mask = bits.contiguous();
  s.vis.mode = mc::Mode::bits;
  s.vis.bits = reinterpret_cast<const uint32_t*>(s.mask.data_ptr<int32_t>());
  return run_linear_forward(x, weight, s, s.vis, bias, out_mask);
}

Tensor linear_grad_input(const Tensor& grad_in, const Tensor& weight, int64_t mode, const OptTensor& owner,
                         const OptTensor& mask, int64_t task, const OptTensor& row_task) {
  check_linear(grad_in, weight, "grad");
  c10::cuda::CUDAGuard guard(grad_in.device());
  const Tensor g = grad_in.contiguous(), w = weight.contiguous();
  const int64_t M = g.size(0), N = w.size(0), K = w.size(1);
  TORCH_CHECK(g.size(1) == N, "maskops: grad has ", g.size(1), " columns, weight has ", N, " rows");
  const Selection s = selection(info(w), mode, owner, mask, task, row_task, M);
  if (backward_kernels(g, s)) {
    Tensor gx = at::empty({M, K}, g.options());
    mc::LinearGradInput f;
    f.dtype = dtype_of(g);
    f.M = M, f.N = N, f.K = K;
    f.grad = g.data_ptr(), f.w = w.data_ptr(), f.vis = s.vis, f.grad_x = gx.data_ptr();
    const Tensor ws = workspace(mc::linear_grad_input_workspace(f), g);
    const cudaError_t err = mc::linear_grad_input(f, ws.data_ptr(), stream());
    if (err != cudaErrorNotSupported) {
      check_cuda(err, "linear_grad_input");
      return gx;
    }
  }
  return by_rows(s, g, [&](const Tensor& rows, int64_t t) { return at::matmul(rows, effective(w, s, t)); });
}

Tensor linear_grad_weight(const Tensor& grad_in, const Tensor& x_in, int64_t mode, const OptTensor& owner,
                          const OptTensor& mask, int64_t task, const OptTensor& row_task) {
  check_linear(grad_in, x_in, "grad");
  c10::cuda::CUDAGuard guard(grad_in.device());
  const Tensor g = grad_in.contiguous(), x = x_in.contiguous();
  const int64_t M = g.size(0), N = g.size(1), K = x.size(1);
  TORCH_CHECK(x.size(0) == M, "maskops: grad and x must have the same number of rows");
  const Selection s = selection(info({N, K}, g), mode, owner, mask, task, row_task, M);
  if (backward_kernels(g, s)) {
    Tensor gw = at::empty({N, K}, g.options());
    mc::LinearGradWeight f;
    f.dtype = dtype_of(g);
    f.M = M, f.N = N, f.K = K;
    f.grad = g.data_ptr(), f.x = x.data_ptr(), f.vis = s.vis, f.grad_w = gw.data_ptr();
    const cudaError_t err = mc::linear_grad_weight(f, stream());
    if (err != cudaErrorNotSupported) {
      check_cuda(err, "linear_grad_weight");
      return gw;
    }
  }
  return summed(s, g, x, [](const Tensor& gs, const Tensor& xs) { return at::matmul(gs.t(), xs); });
}

// Effective weight of one task: w where `mode` selects (a masked copy; dense: w itself).
Tensor mask_weight(const Tensor& weight, int64_t mode, const OptTensor& owner, const OptTensor& mask,
                   int64_t task) {
  TORCH_CHECK(weight.is_cuda() && weight.dim() >= 1, "maskops: weight must be a CUDA tensor");
  c10::cuda::CUDAGuard guard(weight.device());
  const Tensor w = weight.contiguous();
  const Selection s = selection(info(w), mode, owner, mask, task, std::nullopt, 0);
  return effective(w, s, task);
}

// ------------------------------------------------------------------------------ conv2d

Tensor conv2d_forward(const Tensor& x, const Tensor& weight, int64_t mode, const OptTensor& owner,
                      const OptTensor& mask, int64_t task, const OptTensor& row_task, const OptTensor& bias,
                      const OptTensor& out_mask, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 4 && weight.dim() == 4, "maskops: conv2d needs 4-D CUDA x and weight");
  c10::cuda::CUDAGuard guard(x.device());
  const Tensor w = weight.contiguous();
  const Selection s = selection(info(w), mode, owner, mask, task, row_task, x.size(0));
  Tensor y = by_rows(s, x, [&](const Tensor& imgs, int64_t t) {
    return at::convolution(imgs, effective(w, s, t), std::nullopt, stride, padding, dilation, false, {0, 0},
                           groups);
  });
  return apply_bias_and_out_mask(y, bias, out_mask, true);
}

Tensor conv2d_grad_input(const Tensor& grad, const Tensor& weight, int64_t mode, const OptTensor& owner,
                         const OptTensor& mask, int64_t task, const OptTensor& row_task, at::IntArrayRef input_shape,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(grad.is_cuda() && grad.dim() == 4 && weight.dim() == 4, "maskops: conv2d needs 4-D CUDA tensors");
  c10::cuda::CUDAGuard guard(grad.device());
  const Tensor w = weight.contiguous();
  const Selection s = selection(info(w), mode, owner, mask, task, row_task, grad.size(0));
  return by_rows(s, grad, [&](const Tensor& gs, int64_t t) {
    std::vector<int64_t> shape = input_shape.vec();
    shape[0] = gs.size(0);
    const Tensor input = at::empty(shape, gs.options(), gs.suggest_memory_format());  // shape only
    return std::get<0>(at::convolution_backward(gs, input, effective(w, s, t), std::nullopt, stride, padding,
                                                dilation, false, {0, 0}, groups, {true, false, false}));
  });
}

Tensor conv2d_grad_weight(const Tensor& grad, const Tensor& x, int64_t mode, const OptTensor& owner,
                          const OptTensor& mask, int64_t task, const OptTensor& row_task,
                          at::IntArrayRef weight_shape, at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(grad.is_cuda() && grad.dim() == 4 && x.dim() == 4, "maskops: conv2d needs 4-D CUDA tensors");
  c10::cuda::CUDAGuard guard(grad.device());
  const Selection s = selection(info(weight_shape, x), mode, owner, mask, task, row_task, x.size(0));
  const Tensor weight = at::empty(weight_shape, x.options());  // shape only
  return summed(s, grad, x, [&](const Tensor& gs, const Tensor& xs) {
    return std::get<1>(at::convolution_backward(gs, xs, weight, std::nullopt, stride, padding, dilation, false,
                                                {0, 0}, groups, {false, true, false}));
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(maskops, m) {
  m.def("native_linear_forward_bits(Tensor x, Tensor weight, Tensor bits, Tensor? bias, Tensor? out_mask) -> Tensor");
  m.def("native_mask_weight(Tensor weight, int mode, Tensor? owner, Tensor? mask, int task) -> Tensor");
}

TORCH_LIBRARY_IMPL(maskops, CUDA, m) {
  m.impl("native_linear_forward", &linear_forward);
  m.impl("native_linear_forward_bits", &linear_forward_bits);
  m.impl("native_linear_grad_input", &linear_grad_input);
  m.impl("native_linear_grad_weight", &linear_grad_weight);
  m.impl("native_mask_weight", &mask_weight);
  m.impl("native_conv2d_forward", &conv2d_forward);
  m.impl("native_conv2d_grad_input", &conv2d_grad_input);
  m.impl("native_conv2d_grad_weight", &conv2d_grad_weight);
}
