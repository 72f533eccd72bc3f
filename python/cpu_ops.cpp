// CPU kernels of the native maskops ops (schemas in ops.cpp): check the tensors, then run
// the torch-free kernels of csrc/cpu.  Linear products mask weight panels in cache and
// multiply them with ATen's BLAS; convolutions mask a copy of the (small) conv weight and
// call ATen's convolution, per group of images that share a task.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "csrc/cpu/epilogue.h"
#include "csrc/cpu/linear.h"
#include "csrc/cpu/masking.h"
#include "csrc/cpu/task_groups.h"

namespace maskops {
namespace {

using at::Tensor;
using cpu::Mode;
using cpu::Vis;
using OptTensor = std::optional<Tensor>;

// ----------------------------------------------------------------------------- checks

void check_cpu(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "maskops cpu: ", name, " must be a CPU tensor, got ",
              t.device());
}

void check_float(const Tensor& t, const char* name) {
  check_cpu(t, name);
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "maskops cpu: ", name, " must be float32 or float64, got ", t.scalar_type());
}

void check_same_dtype(const Tensor& t, const Tensor& ref, const char* name) {
  check_cpu(t, name);
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "maskops cpu: ", name, " has dtype ",
              t.scalar_type(), " but expected ", ref.scalar_type());
}

// The selection of weights a call uses, with the tensors that back its pointers.
struct Selection {
  Mode mode;
  int task;
  Tensor owner, mask, row_task;  // contiguous; undefined when unused

  template <class T>
  Vis<T> vis() const {
    Vis<T> v;
    v.mode = mode;
    v.task = task;
    if (owner.defined()) v.owner = owner.data_ptr<uint8_t>();
    if (mask.defined()) {
      if (mask.scalar_type() == at::kByte)
        v.binary = mask.data_ptr<uint8_t>();
      else
        v.soft = mask.data_ptr<T>();
    }
    if (row_task.defined()) v.row_task = row_task.data_ptr<int32_t>();
    return v;
  }
};

Selection selection(const Tensor& weight, int64_t mode, const OptTensor& owner,
                    const OptTensor& mask, int64_t task, const OptTensor& row_task,
                    int64_t rows) {
  TORCH_CHECK(mode >= 0 && mode <= 3, "maskops cpu: mode must be 0..3, got ", mode);
  Selection s{Mode(mode), int(task), {}, {}, {}};
  if (s.mode == Mode::visible || s.mode == Mode::trainable) {
    TORCH_CHECK(owner.has_value(), "maskops cpu: owner is required for mode ", mode);
    check_cpu(*owner, "owner");
    TORCH_CHECK(owner->scalar_type() == at::kByte, "maskops cpu: owner must be uint8, got ",
                owner->scalar_type());
    TORCH_CHECK(owner->sizes() == weight.sizes(), "maskops cpu: owner has shape ",
                owner->sizes(), " but weight has ", weight.sizes());
    s.owner = owner->contiguous();
    if (!row_task.has_value()) {
      TORCH_CHECK(task >= 1 && task <= 255, "maskops cpu: task must be in 1..255, got ", task);
    } else {  // row_task's values are checked where rows are grouped
      check_cpu(*row_task, "row_task");
      TORCH_CHECK(row_task->dim() == 1 && row_task->size(0) == rows,
                  "maskops cpu: row_task must have shape (", rows, ",), got ",
                  row_task->sizes());
      s.row_task = row_task->to(at::kInt).contiguous();
    }
  } else if (s.mode == Mode::mask) {
    TORCH_CHECK(mask.has_value(), "maskops cpu: mask is required for mode 3");
    check_cpu(*mask, "mask");
    TORCH_CHECK(mask->sizes() == weight.sizes(), "maskops cpu: mask has shape ", mask->sizes(),
                " but weight has ", weight.sizes());
    const auto dtype = mask->scalar_type();
    TORCH_CHECK(dtype == at::kByte || dtype == at::kBool || dtype == weight.scalar_type(),
                "maskops cpu: mask must be uint8, bool or ", weight.scalar_type(), ", got ",
                dtype);
    s.mask = (dtype == at::kBool ? mask->view(at::kByte) : *mask).contiguous();
  }
  return s;
}

// ----------------------------------------------------------------------------- BLAS

// cpu::Gemm through ATen's matmul on views of the raw blocks (MKL/OpenBLAS underneath).
// Called from the kernels' worker threads, where BLAS runs single-threaded.
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

// Runs fn(T{}) with T the floating type of `t` (float or double).
template <class F>
void for_dtype(const Tensor& t, F&& fn) {
  if (t.scalar_type() == at::kDouble)
    fn(double{});
  else
    fn(float{});
}

// ----------------------------------------------------------------------------- linear

Tensor linear_forward(const Tensor& x_in, const Tensor& weight_in, int64_t mode,
                      const OptTensor& owner, const OptTensor& mask, int64_t task,
                      const OptTensor& row_task, const OptTensor& bias_in,
                      const OptTensor& out_mask_in) {
  check_float(x_in, "x");
  check_same_dtype(weight_in, x_in, "weight");
  TORCH_CHECK(x_in.dim() == 2 && weight_in.dim() == 2 && x_in.size(1) == weight_in.size(1),
              "maskops cpu: linear needs x (M, K) and weight (N, K), got ", x_in.sizes(),
              " and ", weight_in.sizes());
  const Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  const Selection sel = selection(weight, mode, owner, mask, task, row_task, M);
  Tensor bias, out_mask;
  if (bias_in.has_value()) {
    check_same_dtype(*bias_in, x, "bias");
    TORCH_CHECK(bias_in->numel() == N, "maskops cpu: bias must have ", N, " elements");
    bias = bias_in->contiguous();
  }
  if (out_mask_in.has_value()) {
    check_cpu(*out_mask_in, "out_mask");
    const auto& s = out_mask_in->sizes();
    TORCH_CHECK((s.size() == 1 && s[0] == N) || (s.size() == 2 && s[0] == M && s[1] == N),
                "maskops cpu: out_mask must have shape (", N, ",) or (", M, ", ", N, "), got ", s);
    out_mask = out_mask_in->to(x.scalar_type()).contiguous();
  }
  Tensor y = at::empty({M, N}, x.options());
  for_dtype(x, [&](auto zero) {
    using T = decltype(zero);
    cpu::Epilogue<T> epilogue;
    if (bias.defined()) epilogue.bias = bias.data_ptr<T>();
    if (out_mask.defined()) {
      epilogue.out_mask = out_mask.data_ptr<T>();
      epilogue.out_mask_row_stride = out_mask.dim() == 2 ? N : 0;
    }
    cpu::linear_forward<T>(x.data_ptr<T>(), M, K, weight.data_ptr<T>(), N, sel.vis<T>(),
                           epilogue, y.data_ptr<T>(), aten_gemm<T>);
  });
  return y;
}

Tensor linear_grad_input(const Tensor& grad_in, const Tensor& weight_in, int64_t mode,
                         const OptTensor& owner, const OptTensor& mask, int64_t task,
                         const OptTensor& row_task) {
  check_float(grad_in, "grad");
  check_same_dtype(weight_in, grad_in, "weight");
  TORCH_CHECK(grad_in.dim() == 2 && weight_in.dim() == 2 && grad_in.size(1) == weight_in.size(0),
              "maskops cpu: linear grad_input needs grad (M, N) and weight (N, K), got ",
              grad_in.sizes(), " and ", weight_in.sizes());
  const Tensor grad = grad_in.contiguous(), weight = weight_in.contiguous();
  const int64_t M = grad.size(0), N = grad.size(1), K = weight.size(1);
  const Selection sel = selection(weight, mode, owner, mask, task, row_task, M);
  Tensor gx = at::empty({M, K}, grad.options());
  for_dtype(grad, [&](auto zero) {
    using T = decltype(zero);
    cpu::linear_grad_input<T>(grad.data_ptr<T>(), M, N, weight.data_ptr<T>(), K, sel.vis<T>(),
                              gx.data_ptr<T>(), aten_gemm<T>);
  });
  return gx;
}

Tensor linear_grad_weight(const Tensor& grad_in, const Tensor& x_in, int64_t mode,
                          const OptTensor& owner, const OptTensor& mask, int64_t task,
                          const OptTensor& row_task) {
  check_float(grad_in, "grad");
  check_same_dtype(x_in, grad_in, "x");
  TORCH_CHECK(grad_in.dim() == 2 && x_in.dim() == 2 && grad_in.size(0) == x_in.size(0),
              "maskops cpu: linear grad_weight needs grad (M, N) and x (M, K), got ",
              grad_in.sizes(), " and ", x_in.sizes());
  const Tensor grad = grad_in.contiguous(), x = x_in.contiguous();
  const int64_t M = grad.size(0), N = grad.size(1), K = x.size(1);
  Tensor gw = at::empty({N, K}, grad.options());
  const Selection sel = selection(gw, mode, owner, mask, task, row_task, M);
  for_dtype(grad, [&](auto zero) {
    using T = decltype(zero);
    cpu::linear_grad_weight<T>(grad.data_ptr<T>(), M, N, x.data_ptr<T>(), K, sel.vis<T>(),
                               gw.data_ptr<T>(), aten_gemm<T>);
  });
  return gw;
}

// ----------------------------------------------------------------------------- conv

struct ConvGeometry {
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups;
};

ConvGeometry geometry(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                      int64_t groups) {
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "maskops cpu: stride, padding and dilation must have two values each");
  TORCH_CHECK(groups >= 1, "maskops cpu: groups must be positive, got ", groups);
  return {stride.vec(), padding.vec(), dilation.vec(), groups};
}

// Images grouped by task, as index tensors (undefined index: all images in order).
struct ImageGroup {
  int task;
  Tensor index;
};

std::vector<ImageGroup> image_groups(const Selection& sel, int64_t images) {
  const int32_t* tasks = sel.row_task.defined() ? sel.row_task.data_ptr<int32_t>() : nullptr;
  const cpu::TaskGroups g = cpu::group_by_task(tasks, images, sel.task);
  std::vector<ImageGroup> out;
  for (const auto& group : g.groups) {
    Tensor index;
    if (g.reordered())
      index = at::tensor(at::ArrayRef<int64_t>(g.order.data() + group.begin, group.size()),
                         at::kLong);
    out.push_back({int(group.task), index});
  }
  return out;
}

Tensor rows_of(const Tensor& t, const ImageGroup& g) {
  return g.index.defined() ? t.index_select(0, g.index) : t;
}

// The conv weight restricted to the selection of `task` (the weight itself when dense).
Tensor masked_weight(const Tensor& weight, const Selection& sel, int task) {
  if (sel.mode == Mode::dense) return weight;
  Tensor out = at::empty_like(weight, at::MemoryFormat::Contiguous);
  for_dtype(weight, [&](auto zero) {
    using T = decltype(zero);
    cpu::mask_array<T>(weight.data_ptr<T>(), sel.vis<T>(), unsigned(task), weight.numel(),
                       out.data_ptr<T>());
  });
  return out;
}

// Per-group results written back into a batch-sized output at their images' positions.
Tensor assemble(std::vector<std::pair<ImageGroup, Tensor>>& parts, int64_t batch) {
  if (parts.size() == 1 && !parts[0].first.index.defined()) return parts[0].second;
  const Tensor& first = parts[0].second;
  auto sizes = first.sizes().vec();
  sizes[0] = batch;
  Tensor out = at::empty(sizes, first.options().memory_format(first.suggest_memory_format()));
  for (auto& [group, part] : parts) out.index_copy_(0, group.index, part);
  return out;
}

void check_conv(const Tensor& x, const Tensor& weight, const char* x_name) {
  check_float(x, x_name);
  check_same_dtype(weight, x, "weight");
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4, "maskops cpu: conv2d needs 4-D ", x_name,
              " and weight, got ", x.sizes(), " and ", weight.sizes());
}

Tensor conv2d_forward(const Tensor& x, const Tensor& weight_in, int64_t mode,
                      const OptTensor& owner, const OptTensor& mask, int64_t task,
                      const OptTensor& row_task, const OptTensor& bias,
                      const OptTensor& out_mask_in, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_conv(x, weight_in, "x");
  if (bias.has_value()) check_same_dtype(*bias, x, "bias");
  const Tensor weight = weight_in.contiguous();
  const Selection sel = selection(weight, mode, owner, mask, task, row_task, x.size(0));
  const ConvGeometry geo = geometry(stride, padding, dilation, groups);
  std::vector<std::pair<ImageGroup, Tensor>> parts;
  for (const ImageGroup& g : image_groups(sel, x.size(0)))
    parts.emplace_back(g, at::convolution(rows_of(x, g), masked_weight(weight, sel, g.task), bias,
                                          geo.stride, geo.padding, geo.dilation, false, {0, 0},
                                          geo.groups));
  Tensor y = assemble(parts, x.size(0)).contiguous(x.suggest_memory_format());
  if (out_mask_in.has_value()) {
    check_cpu(*out_mask_in, "out_mask");
    const int64_t B = y.size(0), C = y.size(1);
    const auto& s = out_mask_in->sizes();
    TORCH_CHECK((s.size() == 1 && s[0] == C) || (s.size() == 2 && s[0] == B && s[1] == C),
                "maskops cpu: out_mask must have shape (", C, ",) or (", B, ", ", C, "), got ", s);
    const Tensor out_mask = out_mask_in->to(y.scalar_type()).contiguous();
    for_dtype(y, [&](auto zero) {
      using T = decltype(zero);
      // H and W merge into one pixel axis in both layouts.
      cpu::scale_channels<T>(y.data_ptr<T>(), B, C, y.size(2) * y.size(3), y.stride(0),
                             y.stride(1), y.stride(3), out_mask.data_ptr<T>(),
                             out_mask.dim() == 2 ? C : 0);
    });
  }
  return y;
}

Tensor conv2d_grad_input(const Tensor& grad, const Tensor& weight_in, int64_t mode,
                         const OptTensor& owner, const OptTensor& mask, int64_t task,
                         const OptTensor& row_task, at::IntArrayRef input_shape,
                         at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups) {
  check_conv(grad, weight_in, "grad");
  TORCH_CHECK(input_shape.size() == 4 && input_shape[0] == grad.size(0),
              "maskops cpu: input_shape must be 4-D with grad's batch size, got ", input_shape);
  const Tensor weight = weight_in.contiguous();
  const Selection sel = selection(weight, mode, owner, mask, task, row_task, grad.size(0));
  const ConvGeometry geo = geometry(stride, padding, dilation, groups);
  std::vector<std::pair<ImageGroup, Tensor>> parts;
  for (const ImageGroup& g : image_groups(sel, grad.size(0))) {
    const Tensor grad_g = rows_of(grad, g);
    auto shape = input_shape.vec();
    shape[0] = grad_g.size(0);
    // Only the input's shape matters for the input gradient.
    const Tensor input = grad.new_empty({1}).expand(shape);
    parts.emplace_back(g, std::get<0>(at::convolution_backward(
                              grad_g, input, masked_weight(weight, sel, g.task), std::nullopt,
                              geo.stride, geo.padding, geo.dilation, false, {0, 0}, geo.groups,
                              {true, false, false})));
  }
  return assemble(parts, grad.size(0)).contiguous(grad.suggest_memory_format());
}

Tensor conv2d_grad_weight(const Tensor& grad, const Tensor& x, int64_t mode,
                          const OptTensor& owner, const OptTensor& mask, int64_t task,
                          const OptTensor& row_task, at::IntArrayRef weight_shape,
                          at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, int64_t groups) {
  check_conv(x, grad, "x");
  TORCH_CHECK(weight_shape.size() == 4, "maskops cpu: weight_shape must be 4-D, got ",
              weight_shape);
  const ConvGeometry geo = geometry(stride, padding, dilation, groups);
  Tensor gw = at::zeros(weight_shape, x.options());
  const Selection sel = selection(gw, mode, owner, mask, task, row_task, x.size(0));
  const Tensor weight_like = x.new_empty({1}).expand(weight_shape);
  bool written = false;
  for (const ImageGroup& g : image_groups(sel, x.size(0))) {
    for_dtype(gw, [&](auto zero) {
      using T = decltype(zero);
      const Vis<T> v = sel.vis<T>();
      const unsigned t = unsigned(g.task);
      // Frozen for this task: nothing to compute.
      if (!cpu::any_selected<T>(v, gw.numel(), t, 1, gw.numel())) return;
      const Tensor part = std::get<1>(at::convolution_backward(
                              rows_of(grad, g), rows_of(x, g), weight_like, std::nullopt,
                              geo.stride, geo.padding, geo.dilation, false, {0, 0}, geo.groups,
                              {false, true, false}))
                              .contiguous();
      if (!written)
        cpu::mask_array<T>(part.data_ptr<T>(), v, t, gw.numel(), gw.data_ptr<T>());
      else
        cpu::add_masked_array<T>(part.data_ptr<T>(), v, t, gw.numel(), gw.data_ptr<T>());
      written = true;
    });
  }
  return gw;
}

}  // namespace

TORCH_LIBRARY_IMPL(maskops, CPU, m) {
  m.impl("native_linear_forward", &linear_forward);
  m.impl("native_linear_grad_input", &linear_grad_input);
  m.impl("native_linear_grad_weight", &linear_grad_weight);
  m.impl("native_conv2d_forward", &conv2d_forward);
  m.impl("native_conv2d_grad_input", &conv2d_grad_input);
  m.impl("native_conv2d_grad_weight", &conv2d_grad_weight);
}

}  // namespace maskops
