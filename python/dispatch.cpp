// The kernels of every maskops op on CPU and CUDA tensors (schemas in ops.cpp).  Each checks
// its arguments once (checks.cpp), answers empty problems itself, brings the tensors into the
// layout kernels take (kernels.h) and runs the kernels its `backend` argument selects.
#include <torch/library.h>

#include <array>
#include <vector>

#include "args.h"
#include "kernels.h"

namespace maskops {

namespace {

// Native kernels by device type; filled by static registrations before any op runs.
NativeKernels* native_slot(c10::DeviceType type) {
  static NativeKernels cpu{}, cuda{};
  if (type == c10::DeviceType::CPU) return &cpu;
  if (type == c10::DeviceType::CUDA) return &cuda;
  return nullptr;
}

}  // namespace

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::automatic: return "automatic";
    case Backend::torch: return "torch";
    case Backend::cpu: return "cpu";
    case Backend::triton: return "triton";
    case Backend::cuda: return "cuda";
  }
  return "unknown";
}

RegisterNativeKernels::RegisterNativeKernels(c10::DeviceType type, NativeKernels native) {
  *native_slot(type) = native;
}

const Kernels& kernels_for(int64_t backend, const Tensor& like) {
  TORCH_CHECK_VALUE(backend >= 0 && backend <= int64_t(Backend::cuda),
                    "backend must be 0 (automatic) .. 4, got ", backend);
  const Backend b = Backend(backend);
  const NativeKernels* native = native_slot(like.device().type());
  const bool native_runs = native && native->kernels && native->supports(like.scalar_type());
  switch (b) {
    case Backend::automatic:
      return native_runs ? *native->kernels : python_kernels(b);
    case Backend::cpu:
    case Backend::cuda: {
      const auto device = b == Backend::cpu ? c10::DeviceType::CPU : c10::DeviceType::CUDA;
      TORCH_CHECK(native_runs && like.device().type() == device, "maskops backend '",
                  backend_name(b), "' does not support ", dtype_name(like.scalar_type()), " tensors on ",
                  like.device().type());
      return *native->kernels;
    }
    default:
      return python_kernels(b);
  }
}

namespace {

// ----------------------------------------------------------------------------- helpers

using at::MemoryFormat;

// The layout a conv weight (or, for the weight gradient, its owner or mask) reaches kernels
// `k` in: channels_last where it is so and `k` reads such weights, else contiguous.
MemoryFormat conv_format(const Kernels& k, const Tensor& weight_like) {
  return k.reads_channels_last_weights() && channels_last_only(weight_like)
             ? MemoryFormat::ChannelsLast
             : MemoryFormat::Contiguous;
}

Selection task_selection(Mode mode, const Tensor& owner, int64_t task, const OptTensor& tasks,
                         const OptTensor& order, const OptTensor& offsets,
                         MemoryFormat format = MemoryFormat::Contiguous) {
  Selection s;
  s.mode = mode;
  s.owner = owner.contiguous(format);
  s.task = task;
  s.routing = routing_of(tasks, order, offsets);
  return s;
}

Selection mask_selection(const Tensor& mask, MemoryFormat format = MemoryFormat::Contiguous) {
  Selection s;
  s.mode = Mode::mask;
  s.mask = (mask.scalar_type() == at::kBool ? mask.view(at::kByte) : mask).contiguous(format);
  return s;
}

// A backward op's selection argument: `mode` with the owner or the mask it needs.
Selection selection_of(int64_t mode, const OptTensor& owner, const OptTensor& mask, int64_t task,
                       const OptTensor& tasks, const OptTensor& order, const OptTensor& offsets,
                       MemoryFormat format = MemoryFormat::Contiguous) {
  switch (Mode(mode)) {
    case Mode::visible:
    case Mode::trainable: return task_selection(Mode(mode), *owner, task, tasks, order, offsets, format);
    case Mode::mask: return mask_selection(*mask, format);
    default: return Selection{};
  }
}

int64_t rows_of(at::IntArrayRef shape) {
  return c10::multiply_integers(shape.begin(), shape.end() - 1);
}

std::vector<int64_t> with_last(at::IntArrayRef shape, int64_t last) {
  std::vector<int64_t> out = shape.vec();
  out.back() = last;
  return out;
}

// Rows of a (..., C) tensor as a contiguous (rows, C) matrix.
Tensor as_rows(const Tensor& t) { return t.reshape({rows_of(t.sizes()), t.size(-1)}).contiguous(); }

// A (rows, C) result as the op's output shape, without making it a view of anything.
Tensor as_shape(const Tensor& rows, at::IntArrayRef shape) {
  return rows.sizes() == shape ? rows : at::_unsafe_view(rows, shape);
}

// Rows per routed sample of a linear input (B, ..., K).
int64_t rows_per_sample(const Tensor& x, int64_t rows) {
  return x.dim() > 1 && x.size(0) > 0 ? rows / x.size(0) : 1;
}

// out_mask in x's dtype, one row per input row (linear) or per image (conv).
OptTensor out_mask_rows(const OptTensor& out_mask, const Tensor& x, int64_t per_sample) {
  if (!out_mask.has_value()) return std::nullopt;
  Tensor m = out_mask->to(x.scalar_type());
  if (m.dim() == 2 && per_sample > 1) m = m.repeat_interleave(per_sample, 0);
  return m.contiguous();
}

OptTensor contiguous(const OptTensor& t) {
  return t.has_value() ? OptTensor(t->contiguous()) : std::nullopt;
}

// (bias, then out_mask) over an all-zero output: the whole answer for an empty product.
Tensor zero_product(at::IntArrayRef shape, const Tensor& like, const OptTensor& bias,
                    const OptTensor& out_mask, bool conv) {
  Tensor y = at::zeros(shape, like.options().memory_format(like.suggest_memory_format()));
  if (y.numel() == 0) return y;
  std::vector<int64_t> channel(y.dim(), 1);
  channel[conv ? 1 : y.dim() - 1] = -1;
  if (bias.has_value()) y.add_(bias->reshape(channel));
  if (out_mask.has_value()) {
    std::vector<int64_t> per(channel);
    if (out_mask->dim() == 2) per[0] = out_mask->size(0), per[conv ? 1 : y.dim() - 1] = out_mask->size(1);
    const Tensor m = out_mask->to(y.scalar_type()).reshape(per);
    y.mul_(m).masked_fill_(m == 0, 0);  // 0 stays exactly 0, as in every kernel's epilogue
  }
  return y;
}

// The geometry a conv kernel gets: a dilation along an axis whose kernel size is 1 changes
// nothing, and is dropped (oneDNN in torch 2.13 crashes on one such case: a 1x1 kernel with
// padding, stride 2 and dilation 2 over a width-1 channels_last input).
ConvGeometry kernel_geometry(ConvGeometry g, at::IntArrayRef weight_shape) {
  for (int a = 0; a < 2; ++a)
    if (weight_shape[2 + a] == 1) g.dilation[a] = 1;
  return g;
}

std::vector<int64_t> conv_output_shape(const Tensor& x, const Tensor& weight, const ConvGeometry& g) {
  std::vector<int64_t> shape = {x.size(0), weight.size(0), 0, 0};
  for (int a = 0; a < 2; ++a)
    shape[2 + a] = (x.size(2 + a) + 2 * g.padding[a] - g.dilation[a] * (weight.size(2 + a) - 1) - 1) /
                       g.stride[a] + 1;
  return shape;
}

// ----------------------------------------------------------------------------- linear

Tensor linear_forward(const Tensor& x, const Tensor& weight, const Selection& s,
                      const OptTensor& bias, const OptTensor& out_mask, int64_t backend) {
  const Kernels& kernels = kernels_for(backend, x);
  const int64_t M = rows_of(x.sizes()), N = weight.size(0), K = weight.size(1);
  const auto shape = with_last(x.sizes(), N);
  if (M == 0 || N == 0 || K == 0) return zero_product(shape, x, bias, out_mask, false);
  const int64_t per_sample = rows_per_sample(x, M);
  return as_shape(kernels.linear_forward(as_rows(x), weight.contiguous(), s, per_sample,
                                         contiguous(bias), out_mask_rows(out_mask, x, per_sample)),
                  shape);
}

Tensor task_linear(const Tensor& x, const Tensor& weight, const Tensor& owner, int64_t task,
                   const OptTensor& tasks, const OptTensor& order, const OptTensor& offsets,
                   const OptTensor& bias, const OptTensor& out_mask, int64_t backend) {
  check_task_linear(x, weight, owner, task, tasks, order, offsets, bias, out_mask);
  return linear_forward(x, weight, task_selection(Mode::visible, owner, task, tasks, order, offsets),
                        bias, out_mask, backend);
}

Tensor masked_linear(const Tensor& x, const Tensor& weight, const Tensor& mask,
                     const OptTensor& trainable, const OptTensor& bias, const OptTensor& out_mask,
                     int64_t backend) {
  check_masked_linear(x, weight, mask, trainable, bias, out_mask);
  return linear_forward(x, weight, mask_selection(mask), bias, out_mask, backend);
}

Tensor linear_grad_input(const Tensor& grad, const Tensor& weight, int64_t mode,
                         const OptTensor& owner, const OptTensor& mask, int64_t task,
                         const OptTensor& tasks, const OptTensor& order, const OptTensor& offsets,
                         int64_t backend) {
  TORCH_CHECK_VALUE(weight.dim() == 2 && grad.dim() >= 1 && grad.size(-1) == weight.size(0),
                    "linear_grad_input needs grad (..., N) and weight (N, K), got ", grad.sizes(),
                    " and ", weight.sizes());
  check_selection(mode, owner, mask, task, tasks, order, offsets, weight.sym_sizes(), grad,
                  grad.dim() > 1 ? grad.size(0) : 1);
  const Kernels& kernels = kernels_for(backend, grad);
  const int64_t M = rows_of(grad.sizes()), N = weight.size(0), K = weight.size(1);
  const auto shape = with_last(grad.sizes(), K);
  if (M == 0 || N == 0 || K == 0) return at::zeros(shape, grad.options());
  const Selection s = selection_of(mode, owner, mask, task, tasks, order, offsets);
  return as_shape(kernels.linear_grad_input(as_rows(grad), weight.contiguous(), s,
                                            rows_per_sample(grad, M)),
                  shape);
}

Tensor linear_grad_weight(const Tensor& grad, const Tensor& x, int64_t mode,
                          const OptTensor& owner, const OptTensor& mask, int64_t task,
                          const OptTensor& tasks, const OptTensor& order, const OptTensor& offsets,
                          int64_t backend) {
  TORCH_CHECK_VALUE(grad.dim() >= 1 && grad.dim() == x.dim() &&
                        grad.sizes().slice(0, grad.dim() - 1) == x.sizes().slice(0, x.dim() - 1),
                    "linear_grad_weight needs grad (..., N) and x (..., K) with the same rows, got ",
                    grad.sizes(), " and ", x.sizes());
  const int64_t M = rows_of(grad.sizes()), N = grad.size(-1), K = x.size(-1);
  const std::array<c10::SymInt, 2> weight_shape = {c10::SymInt(N), c10::SymInt(K)};
  check_selection(mode, owner, mask, task, tasks, order, offsets, weight_shape, x,
                  x.dim() > 1 ? x.size(0) : 1);
  const Kernels& kernels = kernels_for(backend, x);
  if (M == 0 || N == 0 || K == 0) return at::zeros({N, K}, x.options());
  const Selection s = selection_of(mode, owner, mask, task, tasks, order, offsets);
  return kernels.linear_grad_weight(as_rows(grad), as_rows(x), s, rows_per_sample(x, M));
}

// ----------------------------------------------------------------------------- conv2d

// `selection(format)` builds the call's selection in the weight's layout.
template <class SelectionIn>
Tensor conv2d_forward(const Tensor& x, const Tensor& weight, SelectionIn selection,
                      const OptTensor& bias, const OptTensor& out_mask, const ConvGeometry& g,
                      int64_t backend) {
  const Kernels& kernels = kernels_for(backend, x);
  if (x.numel() == 0 || weight.numel() == 0)
    return zero_product(conv_output_shape(x, weight, g), x, bias, out_mask, true);
  const MemoryFormat format = conv_format(kernels, weight);
  return kernels
      .conv2d_forward(x, weight.contiguous(format), selection(format), contiguous(bias),
                      out_mask_rows(out_mask, x, 1), g)
      .contiguous(x.suggest_memory_format());
}

Tensor task_conv2d(const Tensor& x, const Tensor& weight, const Tensor& owner, int64_t task,
                   const OptTensor& tasks, const OptTensor& order, const OptTensor& offsets,
                   const OptTensor& bias, const OptTensor& out_mask, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                   int64_t backend) {
  check_task_conv2d(x, weight, owner, task, tasks, order, offsets, bias, out_mask, stride, padding,
                    dilation, groups);
  const auto selection = [&](MemoryFormat format) {
    return task_selection(Mode::visible, owner, task, tasks, order, offsets, format);
  };
  return conv2d_forward(x, weight, selection, bias, out_mask,
                        kernel_geometry(geometry_of(stride, padding, dilation, groups), weight.sizes()),
                        backend);
}

Tensor masked_conv2d(const Tensor& x, const Tensor& weight, const Tensor& mask,
                     const OptTensor& trainable, const OptTensor& bias, const OptTensor& out_mask,
                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                     int64_t groups, int64_t backend) {
  check_masked_conv2d(x, weight, mask, trainable, bias, out_mask, stride, padding, dilation, groups);
  const auto selection = [&](MemoryFormat format) { return mask_selection(mask, format); };
  return conv2d_forward(x, weight, selection, bias, out_mask,
                        kernel_geometry(geometry_of(stride, padding, dilation, groups), weight.sizes()),
                        backend);
}

// A conv backward op's geometry, after checking its selection against a batch like `like`.
ConvGeometry backward_geometry(at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups,
                               at::IntArrayRef weight_shape, int64_t mode, const OptTensor& owner,
                               const OptTensor& mask, int64_t task, const OptTensor& tasks,
                               const OptTensor& order, const OptTensor& offsets,
                               const Tensor& like) {
  check_selection(mode, owner, mask, task, tasks, order, offsets,
                  c10::fromIntArrayRefSlow(weight_shape), like, like.size(0));
  return kernel_geometry(geometry_of(stride, padding, dilation, groups), weight_shape);
}

Tensor conv2d_grad_input(const Tensor& grad, const Tensor& weight, int64_t mode,
                         const OptTensor& owner, const OptTensor& mask, int64_t task,
                         const OptTensor& tasks, const OptTensor& order, const OptTensor& offsets,
                         at::IntArrayRef input_shape, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                         int64_t backend) {
  TORCH_CHECK_VALUE(grad.dim() == 4 && weight.dim() == 4 && input_shape.size() == 4 &&
                        input_shape[0] == grad.size(0),
                    "conv2d_grad_input needs 4-D grad and weight and an input_shape with grad's batch");
  const ConvGeometry g = backward_geometry(stride, padding, dilation, groups, weight.sizes(), mode,
                                           owner, mask, task, tasks, order, offsets, grad);
  const Kernels& kernels = kernels_for(backend, grad);
  if (grad.numel() == 0 || weight.numel() == 0 || c10::multiply_integers(input_shape) == 0)
    return at::zeros(input_shape, grad.options().memory_format(grad.suggest_memory_format()));
  const MemoryFormat format = conv_format(kernels, weight);
  return kernels
      .conv2d_grad_input(grad, weight.contiguous(format),
                         selection_of(mode, owner, mask, task, tasks, order, offsets, format),
                         input_shape, g)
      .contiguous(grad.suggest_memory_format());
}

Tensor conv2d_grad_weight(const Tensor& grad, const Tensor& x, int64_t mode,
                          const OptTensor& owner, const OptTensor& mask, int64_t task,
                          const OptTensor& tasks, const OptTensor& order, const OptTensor& offsets,
                          at::IntArrayRef weight_shape, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                          int64_t backend) {
  TORCH_CHECK_VALUE(grad.dim() == 4 && x.dim() == 4 && weight_shape.size() == 4 &&
                        grad.size(0) == x.size(0),
                    "conv2d_grad_weight needs 4-D grad and x with one batch and a 4-D weight_shape");
  const ConvGeometry g = backward_geometry(stride, padding, dilation, groups, weight_shape, mode,
                                           owner, mask, task, tasks, order, offsets, x);
  const Kernels& kernels = kernels_for(backend, x);
  if (grad.numel() == 0 || x.numel() == 0 || c10::multiply_integers(weight_shape) == 0)
    return at::zeros(weight_shape, x.options());
  const OptTensor& selecting = Mode(mode) == Mode::mask ? mask : owner;
  const MemoryFormat format =
      selecting.has_value() ? conv_format(kernels, *selecting) : MemoryFormat::Contiguous;
  return kernels.conv2d_grad_weight(
      grad, x, selection_of(mode, owner, mask, task, tasks, order, offsets, format), weight_shape, g);
}

void register_kernels(torch::Library& m) {
  m.impl("task_linear", &task_linear);
  m.impl("masked_linear", &masked_linear);
  m.impl("task_conv2d", &task_conv2d);
  m.impl("masked_conv2d", &masked_conv2d);
  m.impl("linear_grad_input", &linear_grad_input);
  m.impl("linear_grad_weight", &linear_grad_weight);
  m.impl("conv2d_grad_input", &conv2d_grad_input);
  m.impl("conv2d_grad_weight", &conv2d_grad_weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(maskops, CPU, m) { register_kernels(m); }
TORCH_LIBRARY_IMPL(maskops, CUDA, m) { register_kernels(m); }

}  // namespace maskops
