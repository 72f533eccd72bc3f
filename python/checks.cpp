// Argument checks.  Each error names the argument at fault and has the type a Python user
// expects: TypeError for a wrong dtype, ValueError for a wrong shape or value, RuntimeError
// for a wrong device.  Shapes are read as SymInts, so fake tensors with symbolic shapes
// (torch.compile) are checked too.
#include <sstream>
#include <string>

#include "args.h"

namespace maskops {

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

namespace {

std::string shape(c10::SymIntArrayRef sizes) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
  out << (sizes.size() == 1 ? ",)" : ")");
  return out.str();
}

std::string pair(const std::array<int64_t, 2>& v) {
  return "(" + std::to_string(v[0]) + ", " + std::to_string(v[1]) + ")";
}

bool is_floating(const Tensor& t) { return at::isFloatingType(t.scalar_type()); }

void same_device(const Tensor& t, const char* name, const Tensor& x) {
  TORCH_CHECK(t.device() == x.device(), name, " is on ", t.device(), " but x is on ", x.device(),
              "; all tensors must be on one device");
}

void input_and_weight(const Tensor& x, const Tensor& weight, bool conv) {
  TORCH_CHECK_TYPE(is_floating(x), "x must be a floating tensor (float16/bfloat16/float32/float64), got ",
                   dtype_name(x.scalar_type()));
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), "weight has dtype ",
                   dtype_name(weight.scalar_type()), " but x has ", dtype_name(x.scalar_type()),
                   "; they must match");
  same_device(weight, "weight", x);
  if (conv) {
    TORCH_CHECK_VALUE(weight.dim() == 4, "weight must be 4-D (out_channels, in_channels/groups, kh, kw), got shape ",
                      shape(weight.sym_sizes()));
    TORCH_CHECK_VALUE(x.dim() == 4, "x must be 4-D (batch, channels, height, width), got shape ",
                      shape(x.sym_sizes()));
    TORCH_CHECK_VALUE(weight.sym_size(2) > 0 && weight.sym_size(3) > 0,
                      "weight's kernel must be at least 1 x 1, got shape ", shape(weight.sym_sizes()));
  } else {
    TORCH_CHECK_VALUE(weight.dim() == 2, "weight must be 2-D (out_features, in_features), got shape ",
                      shape(weight.sym_sizes()));
    TORCH_CHECK_VALUE(x.dim() >= 1 && x.sym_size(-1) == weight.sym_size(1), "x's last dimension (",
                      x.dim() ? c10::str(x.sym_size(-1)) : std::string("none"),
                      ") must equal weight's in_features (", weight.sym_size(1), ")");
  }
}

void owner(const Tensor& owner_map, const Tensor& weight, const Tensor& x) {
  TORCH_CHECK_TYPE(owner_map.scalar_type() == at::kByte,
                   "owner must be a torch.uint8 tensor (task ids 0..255), got ",
                   dtype_name(owner_map.scalar_type()));
  TORCH_CHECK_VALUE(owner_map.sym_sizes() == weight.sym_sizes(), "owner has shape ",
                    shape(owner_map.sym_sizes()), " but weight has ", shape(weight.sym_sizes()),
                    "; they must match");
  same_device(owner_map, "owner", x);
}

void mask(const Tensor& m, const Tensor& weight, const Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(m.sym_sizes() == weight.sym_sizes(), name, " has shape ", shape(m.sym_sizes()),
                    " but weight has ", shape(weight.sym_sizes()), "; they must match");
  if (is_floating(m)) {
    TORCH_CHECK_TYPE(m.scalar_type() == weight.scalar_type(), "floating ", name, " has dtype ",
                     dtype_name(m.scalar_type()), " but weight has ",
                     dtype_name(weight.scalar_type()), "; they must match");
  } else {
    TORCH_CHECK_TYPE(m.scalar_type() == at::kBool || m.scalar_type() == at::kByte, name,
                     " must be bool, uint8 or floating, got ", dtype_name(m.scalar_type()));
  }
  same_device(m, name, x);
}

void task_id(int64_t task) {
  TORCH_CHECK_VALUE(task >= 1 && task <= kMaxTask, "task must be in 1..", kMaxTask, ", got ", task);
}

// The per-sample routing of `batch` samples (order and offsets come with it).
void routing(const OptTensor& tasks, const OptTensor& order, const OptTensor& offsets,
             std::optional<c10::SymInt> batch, const Tensor& x) {
  TORCH_CHECK_VALUE(order.has_value() == tasks.has_value() && offsets.has_value() == tasks.has_value(),
                    "a per-sample task tensor comes with its order and offsets (maskops.route builds them)");
  if (!tasks.has_value()) return;
  TORCH_CHECK_VALUE(batch.has_value(), "a per-sample task tensor needs x with a batch dimension");
  TORCH_CHECK_TYPE(tasks->scalar_type() == at::kInt && order->scalar_type() == at::kLong &&
                       offsets->scalar_type() == at::kLong,
                   "a routing is int32 tasks, int64 order and int64 offsets (maskops.route builds it)");
  TORCH_CHECK_VALUE(tasks->dim() == 1 && tasks->sym_size(0) == *batch, "task tensor must have shape (batch,) = (",
                    *batch, ",), got ", shape(tasks->sym_sizes()));
  TORCH_CHECK_VALUE(order->sym_sizes() == tasks->sym_sizes(), "the routing's order must have shape ",
                    shape(tasks->sym_sizes()), ", got ", shape(order->sym_sizes()));
  TORCH_CHECK_VALUE(offsets->dim() == 1 && offsets->sym_size(0) == kTaskIds + 1,
                    "the routing's offsets must have shape (", kTaskIds + 1, ",), got ",
                    shape(offsets->sym_sizes()));
  TORCH_CHECK(tasks->device() == x.device() && order->device() == x.device(), "task is on ",
              tasks->device(), " but x is on ", x.device(), "; route the tasks to x's device");
  TORCH_CHECK(offsets->device().is_cpu() || offsets->device().is_meta(),
              "the routing's offsets must be on the CPU, got ", offsets->device());
}

void bias(const OptTensor& b, const Tensor& x, const c10::SymInt& out_features) {
  if (!b.has_value()) return;
  TORCH_CHECK_VALUE(b->dim() == 1 && b->sym_size(0) == out_features, "bias must have shape (",
                    out_features, ",), got ", shape(b->sym_sizes()));
  TORCH_CHECK_TYPE(b->scalar_type() == x.scalar_type(), "bias has dtype ", dtype_name(b->scalar_type()),
                   " but x has ", dtype_name(x.scalar_type()), "; they must match");
  same_device(*b, "bias", x);
}

void out_mask(const OptTensor& m, const Tensor& x, const c10::SymInt& out_features,
              std::optional<c10::SymInt> batch) {
  if (!m.has_value()) return;
  const bool channel = m->dim() == 1 && m->sym_size(0) == out_features;
  const bool sample = batch.has_value() && m->dim() == 2 && m->sym_size(0) == *batch &&
                      m->sym_size(1) == out_features;
  TORCH_CHECK_VALUE(channel || sample, "out_mask must have shape (", out_features, ",)",
                    batch.has_value() ? c10::str(" or (", *batch, ", ", out_features, ")") : "",
                    ", got ", shape(m->sym_sizes()));
  if (is_floating(*m)) {
    TORCH_CHECK_TYPE(m->scalar_type() == x.scalar_type(), "floating out_mask has dtype ",
                     dtype_name(m->scalar_type()), " but x has ", dtype_name(x.scalar_type()));
  } else {
    TORCH_CHECK_TYPE(m->scalar_type() == at::kBool || m->scalar_type() == at::kByte,
                     "out_mask must be bool, uint8 or floating, got ", dtype_name(m->scalar_type()));
  }
  same_device(*m, "out_mask", x);
}

std::optional<c10::SymInt> linear_batch(const Tensor& x) {
  if (x.dim() > 1) return x.sym_size(0);
  return std::nullopt;
}

void conv_geometry(const Tensor& x, const Tensor& weight, const ConvGeometry& g) {
  const auto& out_channels = weight.sym_size(0);
  const auto& in_per_group = weight.sym_size(1);
  TORCH_CHECK_VALUE(out_channels % g.groups == 0, "weight's out_channels (", out_channels,
                    ") must be divisible by groups (", g.groups, ")");
  TORCH_CHECK_VALUE(x.sym_size(1) == in_per_group * g.groups, "x has ", x.sym_size(1),
                    " channels but weight expects ", in_per_group, " * groups (", g.groups, ") = ",
                    in_per_group * g.groups);
  for (int axis = 0; axis < 2; ++axis) {
    const c10::SymInt extent = x.sym_size(2 + axis) + 2 * g.padding[axis];
    const c10::SymInt window = g.dilation[axis] * (weight.sym_size(2 + axis) - 1) + 1;
    TORCH_CHECK_VALUE(extent >= window, "x's spatial size (", x.sym_size(2), ", ", x.sym_size(3),
                      ") with padding ", pair(g.padding), " is smaller than the dilated kernel (",
                      window, " along dim ", 2 + axis, ")");
  }
}

void linear_common(const Tensor& x, const Tensor& weight, const OptTensor& b,
                   const OptTensor& m) {
  input_and_weight(x, weight, false);
  bias(b, x, weight.sym_size(0));
  out_mask(m, x, weight.sym_size(0), linear_batch(x));
}

ConvGeometry conv_common(const Tensor& x, const Tensor& weight, const OptTensor& b,
                         const OptTensor& m, at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups) {
  const ConvGeometry g = geometry_of(stride, padding, dilation, groups);
  input_and_weight(x, weight, true);
  conv_geometry(x, weight, g);
  bias(b, x, weight.sym_size(0));
  out_mask(m, x, weight.sym_size(0), x.sym_size(0));
  return g;
}

}  // namespace

Routing routing_of(const OptTensor& task, const OptTensor& order, const OptTensor& offsets) {
  if (!task.has_value()) return {};
  return {*task, *order, *offsets};
}

ConvGeometry geometry_of(at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK_VALUE(groups >= 1, "groups must be a positive int, got ", groups);
  ConvGeometry g{};
  g.groups = groups;
  const std::pair<const char*, at::IntArrayRef> values[] = {
      {"stride", stride}, {"padding", padding}, {"dilation", dilation}};
  std::array<int64_t, 2>* fields[] = {&g.stride, &g.padding, &g.dilation};
  for (int i = 0; i < 3; ++i) {
    const auto& [name, value] = values[i];
    const int64_t low = i == 1 ? 0 : 1;
    const bool ok = value.size() == 2 && value[0] >= low && value[1] >= low;
    TORCH_CHECK_VALUE(ok, name, " must be an int >= ", low, " or a pair of them, got ", value);
    *fields[i] = {value[0], value[1]};
  }
  return g;
}

void check_task_linear(const Tensor& x, const Tensor& weight, const Tensor& owner_map, int64_t task,
                       const OptTensor& tasks, const OptTensor& order, const OptTensor& offsets,
                       const OptTensor& b, const OptTensor& m) {
  input_and_weight(x, weight, false);
  routing(tasks, order, offsets, linear_batch(x), x);
  if (!tasks.has_value()) task_id(task);
  bias(b, x, weight.sym_size(0));
  out_mask(m, x, weight.sym_size(0), linear_batch(x));
  owner(owner_map, weight, x);
}

// `trainable` selects weights; it does not scale their gradient, so it is bool or uint8.
void trainable_mask(const OptTensor& t, const Tensor& weight, const Tensor& x) {
  if (!t.has_value()) return;
  TORCH_CHECK_TYPE(t->scalar_type() == at::kBool || t->scalar_type() == at::kByte,
                   "trainable must be bool or uint8 (nonzero: trainable), got ",
                   dtype_name(t->scalar_type()));
  mask(*t, weight, x, "trainable");
}

void check_masked_linear(const Tensor& x, const Tensor& weight, const Tensor& m,
                         const OptTensor& trainable, const OptTensor& b, const OptTensor& om) {
  linear_common(x, weight, b, om);
  mask(m, weight, x, "mask");
  trainable_mask(trainable, weight, x);
}

void check_task_conv2d(const Tensor& x, const Tensor& weight, const Tensor& owner_map, int64_t task,
                       const OptTensor& tasks, const OptTensor& order, const OptTensor& offsets,
                       const OptTensor& b, const OptTensor& m, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  conv_common(x, weight, b, m, stride, padding, dilation, groups);
  routing(tasks, order, offsets, x.sym_size(0), x);
  if (!tasks.has_value()) task_id(task);
  owner(owner_map, weight, x);
}

void check_masked_conv2d(const Tensor& x, const Tensor& weight, const Tensor& m,
                         const OptTensor& trainable, const OptTensor& b, const OptTensor& om,
                         at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups) {
  conv_common(x, weight, b, om, stride, padding, dilation, groups);
  mask(m, weight, x, "mask");
  trainable_mask(trainable, weight, x);
}

void check_selection(int64_t mode, const OptTensor& owner_map, const OptTensor& m, int64_t task,
                     const OptTensor& tasks, const OptTensor& order, const OptTensor& offsets,
                     c10::SymIntArrayRef weight_shape, const Tensor& like, int64_t batch) {
  TORCH_CHECK_VALUE(mode >= int64_t(Mode::dense) && mode <= int64_t(Mode::mask),
                    "mode must be dense, visible, trainable or mask (0..3), got ", mode);
  switch (Mode(mode)) {
    case Mode::visible:
    case Mode::trainable:
      TORCH_CHECK_VALUE(owner_map.has_value(), "owner is required for mode ", mode);
      TORCH_CHECK_TYPE(owner_map->scalar_type() == at::kByte, "owner must be a torch.uint8 tensor, got ",
                       dtype_name(owner_map->scalar_type()));
      TORCH_CHECK_VALUE(owner_map->sym_sizes() == weight_shape, "owner has shape ",
                        shape(owner_map->sym_sizes()), " but the weight has ", shape(weight_shape));
      same_device(*owner_map, "owner", like);
      routing(tasks, order, offsets, c10::SymInt(batch), like);
      if (!tasks.has_value()) task_id(task);
      break;
    case Mode::mask:
      TORCH_CHECK_VALUE(m.has_value(), "mask is required for mode ", mode);
      TORCH_CHECK_VALUE(m->sym_sizes() == weight_shape, "mask has shape ", shape(m->sym_sizes()),
                        " but the weight has ", shape(weight_shape));
      TORCH_CHECK_TYPE(!is_floating(*m) || m->scalar_type() == like.scalar_type(),
                       "a floating mask must have the dtype of the weight");
      TORCH_CHECK_TYPE(is_floating(*m) || m->scalar_type() == at::kBool || m->scalar_type() == at::kByte,
                       "mask must be bool, uint8 or floating, got ", dtype_name(m->scalar_type()));
      same_device(*m, "mask", like);
      break;
    default: break;
  }
}

}  // namespace maskops
