// Native CUDA kernels (kernels.h): the tensor-core kernels of csrc/cuda where they are faster,
// else a masked copy of the weight (a csrc/cuda kernel) handed to ATen's cuBLAS / cuDNN, one
// call per task present in the batch.  Nothing here reads device memory on the host: a
// batch's task groups come from its routing's offsets, which live on the CPU.
//
// Linear float16/bfloat16 runs the tensor-core kernels, which mask the weight in registers,
// where they are the faster path (see forward_kernels).  Everything else (many rows of one
// task, float32, rows whose length is not a multiple of 8, every convolution) runs on the
// masked copy.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <functional>
#include <utility>
#include <vector>

#include "../csrc/cuda/launch.h"
#include "kernels.h"
#include "owner_cache.h"

namespace maskops {
namespace {

namespace mc = maskops::cuda;

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

// The selection as the CUDA kernels take it; per-row tasks (one per row of x) when mixed.
struct DeviceSelection {
  mc::Vis vis;
  Tensor row_task;  // int32 (rows,), keeps vis.row_task alive

  DeviceSelection(const Selection& s, int64_t rows_per_sample) {
    vis.mode = s.mode;
    vis.task = int(s.task);
    if (s.owner.defined()) vis.owner = s.owner.data_ptr<uint8_t>();
    if (s.mode == Mode::bits) vis.bits = reinterpret_cast<const uint32_t*>(s.mask.data_ptr<int32_t>());
    if (s.mode == Mode::mask) {
      vis.mask = s.mask.data_ptr();
      vis.soft = s.mask.scalar_type() != at::kByte;
    }
    if (s.mixed()) {
      row_task = rows_per_sample > 1 ? s.routing.task.repeat_interleave(rows_per_sample)
                                     : s.routing.task;
      vis.row_task = row_task.data_ptr<int32_t>();
    }
  }

  // The same selection for one task, all rows.
  mc::Vis for_task(int64_t task) const {
    mc::Vis v = vis;
    v.task = int(task);
    v.row_task = nullptr;
    return v;
  }
};

// w where `vis` selects, elsewhere 0.
Tensor masked(const Tensor& w, const mc::Vis& vis) {
  Tensor out = at::empty_like(w, at::MemoryFormat::Contiguous);
  const int64_t rows = w.size(0), cols = rows ? w.numel() / rows : 0;
  check_cuda(mc::mask_weight(dtype_of(w), rows, cols, w.data_ptr(), vis, out.data_ptr(), false, stream()),
             "mask_weight");
  return out;
}

Tensor effective(const Tensor& w, const Selection& s, const DeviceSelection& d, int64_t task) {
  return s.mode == Mode::dense ? w : masked(w, d.for_task(task));
}

// (task, rows of that task) per task present; one group (task, undefined) without a routing.
// Rows come from the routing: its offsets on the host, its order on the device.
std::vector<std::pair<int64_t, Tensor>> task_groups(const Selection& s, int64_t rows_per_sample) {
  if (!s.mixed()) return {{s.task, Tensor()}};
  const Routing& r = s.routing;
  const int64_t* offsets = r.offsets.data_ptr<int64_t>();
  std::vector<std::pair<int64_t, Tensor>> groups;
  for (int64_t t = 1; t < kTaskIds; ++t) {
    if (offsets[t + 1] == offsets[t]) continue;
    Tensor samples = r.order.slice(0, offsets[t], offsets[t + 1]);
    if (rows_per_sample > 1)
      samples = (samples.unsqueeze(1) * rows_per_sample +
                 at::arange(rows_per_sample, samples.options()))
                    .flatten();
    groups.emplace_back(t, samples);
  }
  return groups;
}

// out rows = run(rows of task t, t) for every group.
Tensor by_rows(const Selection& s, int64_t rows_per_sample, const Tensor& rows,
               const std::function<Tensor(const Tensor&, int64_t)>& run) {
  Tensor out;
  for (const auto& [task, index] : task_groups(s, rows_per_sample)) {
    if (!index.defined()) return run(rows, task);
    const Tensor part = run(rows.index_select(0, index), task);
    if (!out.defined()) {
      std::vector<int64_t> sizes = part.sizes().vec();
      sizes[0] = rows.size(0);
      out = at::empty(sizes, part.options().memory_format(part.suggest_memory_format()));
    }
    out.index_copy_(0, index, part);
  }
  return out;
}

// Sum over groups of (run(rows of task t) restricted to t's selection): weight gradients.
Tensor summed(const Selection& s, const DeviceSelection& d, int64_t rows_per_sample, const Tensor& a,
              const Tensor& b, const std::function<Tensor(const Tensor&, const Tensor&)>& run) {
  Tensor total;
  for (const auto& [task, index] : task_groups(s, rows_per_sample)) {
    Tensor part = index.defined() ? run(a.index_select(0, index), b.index_select(0, index)) : run(a, b);
    part = part.contiguous();
    const Tensor kept = s.mode == Mode::dense ? part : masked(part, d.for_task(task));
    total = total.defined() ? total + kept : kept;
  }
  return total;
}

// Whether a tensor-core kernel ran (errors raise); false where it declined the problem
// (cudaErrorNotSupported) and the library path must run instead.
bool launched(cudaError_t err, const char* what) {
  if (err == cudaErrorNotSupported) return false;
  check_cuda(err, what);
  return true;
}

// y * out_mask (broadcast), exactly 0 where out_mask is 0, as the kernels' epilogue gives.
Tensor masked_output(const Tensor& y, const Tensor& out_mask) {
  return y.mul_(out_mask).masked_fill_(out_mask == 0, 0);
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
bool forward_kernels(const Tensor& x, const Selection& s) {
  return tensor_cores(x) && (x.size(0) <= kGpuFewRows || s.mixed());
}
bool backward_kernels(const Tensor& g, const Selection& s) { return tensor_cores(g) && s.mixed(); }

// A single-task visible forward over few rows reads the task's 1-bit map instead of the
// uint8 owner (a quarter of the mask traffic), built once per owner version and task.
Selection with_bits(const Selection& s, const Tensor& x) {
  if (s.mode != Mode::visible || s.mixed() || x.size(0) > kGpuFewRows || s.owner.dim() != 2)
    return s;
  Selection bits;
  bits.mode = Mode::bits;
  bits.mask = cached_visible_bits(s.owner, s.task);
  return bits;
}

class CudaKernels final : public Kernels {
 public:
  Tensor linear_forward(const Tensor& x, const Tensor& w, const Selection& selection,
                        int64_t rows_per_sample, const OptTensor& bias,
                        const OptTensor& out_mask) const override {
    c10::cuda::CUDAGuard guard(x.device());
    const Selection s = with_bits(selection, x);
    const DeviceSelection d(s, rows_per_sample);
    const int64_t M = x.size(0), N = w.size(0), K = w.size(1);
    if (forward_kernels(x, s)) {
      Tensor y = at::empty({M, N}, x.options());
      mc::LinearForward f;
      f.dtype = dtype_of(x);
      f.M = M, f.N = N, f.K = K;
      f.x = x.data_ptr(), f.w = w.data_ptr(), f.vis = d.vis;
      f.bias = bias.has_value() ? bias->data_ptr() : nullptr;
      f.out_mask = out_mask.has_value() ? out_mask->data_ptr() : nullptr;
      f.out_mask_per_row = out_mask.has_value() && out_mask->dim() == 2;
      f.y = y.data_ptr();
      const Tensor ws = workspace(mc::linear_forward_workspace(f), x);
      if (launched(mc::linear_forward(f, ws.data_ptr(), stream()), "linear_forward")) return y;
    }
    // The bits map is a kernel format: the library path masks from the owner.
    const Selection& library = s.mode == Mode::bits ? selection : s;
    const DeviceSelection dl(library, rows_per_sample);
    Tensor y = by_rows(library, rows_per_sample, x, [&](const Tensor& rows, int64_t t) {
      const Tensor wt = effective(w, library, dl, t).t();
      return bias.has_value() ? at::addmm(*bias, rows, wt) : at::matmul(rows, wt);  // cuBLAS adds the bias
    });
    return out_mask.has_value() ? masked_output(y, *out_mask) : y;
  }

  Tensor linear_grad_input(const Tensor& g, const Tensor& w, const Selection& s,
                           int64_t rows_per_sample) const override {
    c10::cuda::CUDAGuard guard(g.device());
    const DeviceSelection d(s, rows_per_sample);
    const int64_t M = g.size(0), N = w.size(0), K = w.size(1);
    if (backward_kernels(g, s)) {
      Tensor gx = at::empty({M, K}, g.options());
      mc::LinearGradInput f;
      f.dtype = dtype_of(g);
      f.M = M, f.N = N, f.K = K;
      f.grad = g.data_ptr(), f.w = w.data_ptr(), f.vis = d.vis, f.grad_x = gx.data_ptr();
      const Tensor ws = workspace(mc::linear_grad_input_workspace(f), g);
      if (launched(mc::linear_grad_input(f, ws.data_ptr(), stream()), "linear_grad_input")) return gx;
    }
    return by_rows(s, rows_per_sample, g,
                   [&](const Tensor& rows, int64_t t) { return at::matmul(rows, effective(w, s, d, t)); });
  }

  Tensor linear_grad_weight(const Tensor& g, const Tensor& x, const Selection& s,
                            int64_t rows_per_sample) const override {
    c10::cuda::CUDAGuard guard(g.device());
    const DeviceSelection d(s, rows_per_sample);
    const int64_t M = g.size(0), N = g.size(1), K = x.size(1);
    if (backward_kernels(g, s)) {
      Tensor gw = at::empty({N, K}, g.options());
      mc::LinearGradWeight f;
      f.dtype = dtype_of(g);
      f.M = M, f.N = N, f.K = K;
      f.grad = g.data_ptr(), f.x = x.data_ptr(), f.vis = d.vis, f.grad_w = gw.data_ptr();
      if (launched(mc::linear_grad_weight(f, stream()), "linear_grad_weight")) return gw;
    }
    return summed(s, d, rows_per_sample, g, x,
                  [](const Tensor& gs, const Tensor& xs) { return at::matmul(gs.t(), xs); });
  }

  Tensor conv2d_forward(const Tensor& x, const Tensor& weight, const Selection& s,
                        const OptTensor& bias, const OptTensor& out_mask,
                        const ConvGeometry& g) const override {
    c10::cuda::CUDAGuard guard(x.device());
    const DeviceSelection d(s, 1);
    Tensor y = by_rows(s, 1, x, [&](const Tensor& images, int64_t t) {
      return at::convolution(images, effective(weight, s, d, t), bias, g.stride, g.padding,
                             g.dilation, false, {0, 0}, g.groups);
    });
    if (out_mask.has_value())
      y = masked_output(y, out_mask->reshape({out_mask->dim() == 1 ? 1 : out_mask->size(0), -1, 1, 1}));
    return y;
  }

  Tensor conv2d_grad_input(const Tensor& grad, const Tensor& weight, const Selection& s,
                           at::IntArrayRef input_shape, const ConvGeometry& g) const override {
    c10::cuda::CUDAGuard guard(grad.device());
    const DeviceSelection d(s, 1);
    return by_rows(s, 1, grad, [&](const Tensor& gs, int64_t t) {
      std::vector<int64_t> shape = input_shape.vec();
      shape[0] = gs.size(0);
      const Tensor input = at::empty(shape, gs.options(), gs.suggest_memory_format());  // shape only
      return std::get<0>(at::convolution_backward(gs, input, effective(weight, s, d, t), std::nullopt,
                                                  g.stride, g.padding, g.dilation, false, {0, 0},
                                                  g.groups, {true, false, false}));
    });
  }

  Tensor conv2d_grad_weight(const Tensor& grad, const Tensor& x, const Selection& s,
                            at::IntArrayRef weight_shape, const ConvGeometry& g) const override {
    c10::cuda::CUDAGuard guard(grad.device());
    const DeviceSelection d(s, 1);
    const Tensor weight = at::empty(weight_shape, x.options());  // shape only
    return summed(s, d, 1, grad, x, [&](const Tensor& gs, const Tensor& xs) {
      return std::get<1>(at::convolution_backward(gs, xs, weight, std::nullopt, g.stride, g.padding,
                                                  g.dilation, false, {0, 0}, g.groups,
                                                  {false, true, false}));
    });
  }
};

bool cuda_supports(at::ScalarType dtype) {
  return dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat;
}

const CudaKernels cuda_kernels;
const RegisterNativeKernels registration(c10::DeviceType::CUDA, {&cuda_kernels, cuda_supports});

}  // namespace
}  // namespace maskops
