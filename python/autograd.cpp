// Autograd of the four public ops, in C++ (torch::autograd::Function): the forward runs the
// device kernel below autograd; the backward calls the backward ops through the dispatcher,
// so a compiled backward is made of maskops ops too.  The backward ops have no derivative
// of their own: double backward raises.
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <type_traits>
#include <vector>

#include "args.h"
#include "op_handles.h"

namespace maskops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using IntList = std::vector<int64_t>;

OptTensor opt(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }
Tensor get(const OptTensor& t) { return t.value_or(Tensor()); }

// The geometry of a conv op.
struct Geometry {
  IntList stride, padding, dilation;
  int64_t groups;
};

// What a backward needs besides tensors, kept in one saved_data entry (each entry costs a hash
// map insert and lookup per call): the backend, the task, the edge of every argument (the
// context's needs_input_grad counts defined tensor arguments only) and a conv's geometry.
struct State {
  int64_t backend = 0, task = 1;
  IntList edges;                      // by argument position; -1: not a tensor with an edge
  std::optional<Geometry> geometry;   // conv ops

  template <class... Args>
  static IntList edges_of(const Args&... args) {
    IntList edges;
    int64_t next = 0;
    auto add = [&](const auto& arg) {
      using T = std::decay_t<decltype(arg)>;
      if constexpr (std::is_same_v<T, Tensor>)
        edges.push_back(next++);
      else if constexpr (std::is_same_v<T, OptTensor>)
        edges.push_back(arg.has_value() && arg->defined() ? next++ : -1);
      else
        edges.push_back(-1);
    };
    (add(args), ...);
    return edges;
  }

  void save(AutogradContext* ctx) const {
    IntList packed = {backend, task, int64_t(edges.size())};
    packed.insert(packed.end(), edges.begin(), edges.end());
    if (geometry) {
      for (const IntList* pair : {&geometry->stride, &geometry->padding, &geometry->dilation})
        packed.insert(packed.end(), pair->begin(), pair->end());
      packed.push_back(geometry->groups);
    }
    ctx->saved_data["state"] = std::move(packed);
  }

  static State load(AutogradContext* ctx) {
    const IntList packed = ctx->saved_data["state"].toIntVector();
    State s;
    s.backend = packed[0];
    s.task = packed[1];
    const auto edges_end = packed.begin() + 3 + packed[2];
    s.edges.assign(packed.begin() + 3, edges_end);
    if (edges_end != packed.end()) {
      const auto g = edges_end;
      s.geometry = Geometry{{g[0], g[1]}, {g[2], g[3]}, {g[4], g[5]}, g[6]};
    }
    return s;
  }

  bool needs(AutogradContext* ctx, int argument) const {
    return edges[argument] >= 0 && ctx->needs_input_grad(edges[argument]);
  }
};

// out_mask shaped to multiply an output (linear (B, ..., N), conv (B, C, H, W)).
Tensor broadcastable(const Tensor& out_mask, const Tensor& y, bool conv) {
  std::vector<int64_t> shape(y.dim(), 1);
  const int64_t channel = conv ? 1 : y.dim() - 1;
  shape[channel] = out_mask.size(-1);
  if (out_mask.dim() == 2) shape[0] = out_mask.size(0);
  return out_mask.to(y.scalar_type()).reshape(shape);
}

Tensor times_out_mask(const Tensor& grad, const OptTensor& out_mask, bool conv) {
  return out_mask.has_value() ? grad * broadcastable(*out_mask, grad, conv) : grad;
}

// Sum over dims [first, last) of t (none: t itself; at::sum with no dims would sum them all).
Tensor sum_dims(const Tensor& t, int64_t first, int64_t last) {
  IntList dims;
  for (int64_t d = first; d < last; ++d) dims.push_back(d);
  return dims.empty() ? t : t.sum(dims);
}

Tensor bias_grad(const Tensor& g, bool conv) {
  if (conv) return g.sum(IntList{0, 2, 3});
  return sum_dims(g, 0, g.dim() - 1);
}

// d loss / d out_mask from the output before the mask was applied.
Tensor out_mask_grad(const Tensor& grad, const Tensor& unmasked, const Tensor& out_mask, bool conv) {
  const Tensor product = grad * unmasked;
  if (conv) return out_mask.dim() == 1 ? product.sum(IntList{0, 2, 3}) : product.sum(IntList{2, 3});
  return out_mask.dim() == 1 ? sum_dims(product, 0, product.dim() - 1)
                             : sum_dims(product, 1, product.dim() - 1);
}

// The weights whose gradient a masked op keeps: the mask, restricted to `trainable`.
Tensor kept(const Tensor& mask, const OptTensor& trainable) {
  if (!trainable.has_value()) return mask;
  const Tensor train = trainable->to(at::kBool);
  return mask.is_floating_point() ? mask * train.to(mask.scalar_type()) : mask.to(at::kBool) & train;
}

// The input and weight gradients through the backward ops, for linear or conv (geometry).
struct Backward {
  const Tensor& x;
  const Tensor& weight;
  int64_t backend;
  const Geometry* geometry;  // null for linear

  Tensor input(const Tensor& g, Mode mode, const OptTensor& owner, const OptTensor& mask,
               int64_t task, const Routing& r) const {
    if (!geometry)
      return ops::linear_grad_input()
          .call(g, weight, int64_t(mode), owner, mask, task, opt(r.task), opt(r.order),
                opt(r.offsets), backend);
    return ops::conv2d_grad_input()
        .call(g, weight, int64_t(mode), owner, mask, task, opt(r.task), opt(r.order),
              opt(r.offsets), x.sizes(), geometry->stride, geometry->padding, geometry->dilation,
              geometry->groups, backend);
  }

  Tensor weights(const Tensor& g, Mode mode, const OptTensor& owner, const OptTensor& mask,
                 int64_t task, const Routing& r) const {
    if (!geometry)
      return ops::linear_grad_weight()
          .call(g, x, int64_t(mode), owner, mask, task, opt(r.task), opt(r.order),
                opt(r.offsets), backend);
    return ops::conv2d_grad_weight()
        .call(g, x, int64_t(mode), owner, mask, task, opt(r.task), opt(r.order), opt(r.offsets),
              weight.sizes(), geometry->stride, geometry->padding, geometry->dilation,
              geometry->groups, backend);
  }
};

// ----------------------------------------------------------------------------- task ops
// Saved: x, weight, owner, tasks, order, offsets, bias, out_mask.

void save_task(AutogradContext* ctx, const Tensor& x, const Tensor& weight, const Tensor& owner,
               const OptTensor& tasks, const OptTensor& order, const OptTensor& offsets,
               const OptTensor& bias, const OptTensor& out_mask, const State& state) {
  ctx->save_for_backward(
      {x, weight, owner, get(tasks), get(order), get(offsets), get(bias), get(out_mask)});
  state.save(ctx);
}

// Gradients of (x, weight, owner, task, tasks, order, offsets, bias, out_mask, [geometry], backend).
variable_list task_backward(AutogradContext* ctx, const Tensor& grad) {
  const variable_list v = ctx->get_saved_variables();
  const State state = State::load(ctx);
  const Tensor &x = v[0], &weight = v[1], &owner = v[2];
  const Routing routing = routing_of(opt(v[3]), opt(v[4]), opt(v[5]));
  const OptTensor bias = opt(v[6]), out_mask = opt(v[7]);
  const Geometry* geometry = state.geometry ? &*state.geometry : nullptr;
  const bool conv = geometry != nullptr;
  const int64_t task = state.task, backend = state.backend;
  const Backward through{x, weight, backend, geometry};
  const Tensor g = times_out_mask(grad, out_mask, conv);
  variable_list out(state.edges.size());
  if (state.needs(ctx, 0))
    out[0] = through.input(g, Mode::visible, owner, std::nullopt, task, routing);
  if (state.needs(ctx, 1))
    out[1] = through.weights(g, Mode::trainable, owner, std::nullopt, task, routing);
  if (state.needs(ctx, 7)) out[7] = bias_grad(g, conv);
  if (state.needs(ctx, 8)) {
    const Tensor unmasked =
        conv ? ops::task_conv2d().call(x, weight, owner, task, opt(v[3]), opt(v[4]), opt(v[5]),
                                       bias, std::nullopt, geometry->stride, geometry->padding,
                                       geometry->dilation, geometry->groups, backend)
             : ops::task_linear().call(x, weight, owner, task, opt(v[3]), opt(v[4]), opt(v[5]),
                                       bias, std::nullopt, backend);
    out[8] = out_mask_grad(grad, unmasked, *out_mask, conv);
  }
  return out;
}

class TaskLinear : public torch::autograd::Function<TaskLinear> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& owner, int64_t task, const OptTensor& tasks,
                        const OptTensor& order, const OptTensor& offsets, const OptTensor& bias,
                        const OptTensor& out_mask, int64_t backend) {
    at::AutoDispatchBelowADInplaceOrView below;
    Tensor y = ops::task_linear().call(x, weight, owner, task, tasks, order, offsets, bias,
                                       out_mask, backend);
    save_task(ctx, x, weight, owner, tasks, order, offsets, bias, out_mask,
              {backend, task, State::edges_of(x, weight, owner, task, tasks, order, offsets,
                                              bias, out_mask, backend)});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return task_backward(ctx, grads[0]);
  }
};

class TaskConv2d : public torch::autograd::Function<TaskConv2d> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& owner, int64_t task, const OptTensor& tasks,
                        const OptTensor& order, const OptTensor& offsets, const OptTensor& bias,
                        const OptTensor& out_mask, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation, int64_t groups, int64_t backend) {
    at::AutoDispatchBelowADInplaceOrView below;
    Tensor y = ops::task_conv2d().call(x, weight, owner, task, tasks, order, offsets, bias,
                                       out_mask, stride, padding, dilation, groups, backend);
    save_task(ctx, x, weight, owner, tasks, order, offsets, bias, out_mask,
              {backend, task,
               State::edges_of(x, weight, owner, task, tasks, order, offsets, bias, out_mask,
                               stride, padding, dilation, groups, backend),
               Geometry{stride.vec(), padding.vec(), dilation.vec(), groups}});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return task_backward(ctx, grads[0]);
  }
};

// ----------------------------------------------------------------------------- masked ops
// Saved: x, weight, mask, trainable, bias, out_mask.

void save_masked(AutogradContext* ctx, const Tensor& x, const Tensor& weight, const Tensor& mask,
                 const OptTensor& trainable, const OptTensor& bias, const OptTensor& out_mask,
                 const State& state) {
  ctx->save_for_backward({x, weight, mask, get(trainable), get(bias), get(out_mask)});
  state.save(ctx);
}

// Gradients of (x, weight, mask, trainable, bias, out_mask, [geometry], backend).
variable_list masked_backward(AutogradContext* ctx, const Tensor& grad) {
  const variable_list v = ctx->get_saved_variables();
  const State state = State::load(ctx);
  const Tensor &x = v[0], &weight = v[1], &mask = v[2];
  const OptTensor trainable = opt(v[3]), bias = opt(v[4]), out_mask = opt(v[5]);
  const Geometry* geometry = state.geometry ? &*state.geometry : nullptr;
  const bool conv = geometry != nullptr;
  const int64_t backend = state.backend;
  const Backward through{x, weight, backend, geometry};
  const Tensor g = times_out_mask(grad, out_mask, conv);
  const Routing none;
  variable_list out(state.edges.size());
  if (state.needs(ctx, 0)) out[0] = through.input(g, Mode::mask, std::nullopt, mask, 1, none);
  if (state.needs(ctx, 2)) {
    // A soft mask's gradient needs the whole of grad^T x: computed once, both derived from it.
    const Tensor full = through.weights(g, Mode::dense, std::nullopt, std::nullopt, 1, none);
    out[2] = full * weight;
    if (state.needs(ctx, 1)) out[1] = full * kept(mask, trainable);
  } else if (state.needs(ctx, 1)) {
    out[1] = through.weights(g, Mode::mask, std::nullopt, kept(mask, trainable), 1, none);
  }
  if (state.needs(ctx, 4)) out[4] = bias_grad(g, conv);
  if (state.needs(ctx, 5)) {
    const Tensor unmasked =
        conv ? ops::masked_conv2d().call(x, weight, mask, trainable, bias, std::nullopt,
                                         geometry->stride, geometry->padding, geometry->dilation,
                                         geometry->groups, backend)
             : ops::masked_linear().call(x, weight, mask, trainable, bias, std::nullopt, backend);
    out[5] = out_mask_grad(grad, unmasked, *out_mask, conv);
  }
  return out;
}

class MaskedLinear : public torch::autograd::Function<MaskedLinear> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& mask, const OptTensor& trainable, const OptTensor& bias,
                        const OptTensor& out_mask, int64_t backend) {
    at::AutoDispatchBelowADInplaceOrView below;
    Tensor y = ops::masked_linear().call(x, weight, mask, trainable, bias, out_mask, backend);
    save_masked(ctx, x, weight, mask, trainable, bias, out_mask,
                {backend, 1, State::edges_of(x, weight, mask, trainable, bias, out_mask, backend)});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return masked_backward(ctx, grads[0]);
  }
};

class MaskedConv2d : public torch::autograd::Function<MaskedConv2d> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& mask, const OptTensor& trainable, const OptTensor& bias,
                        const OptTensor& out_mask, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation, int64_t groups, int64_t backend) {
    at::AutoDispatchBelowADInplaceOrView below;
    Tensor y = ops::masked_conv2d().call(x, weight, mask, trainable, bias, out_mask, stride,
                                         padding, dilation, groups, backend);
    save_masked(ctx, x, weight, mask, trainable, bias, out_mask,
                {backend, 1,
                 State::edges_of(x, weight, mask, trainable, bias, out_mask, stride, padding,
                                 dilation, groups, backend),
                 Geometry{stride.vec(), padding.vec(), dilation.vec(), groups}});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return masked_backward(ctx, grads[0]);
  }
};

bool requires_grad(const Tensor& t) { return t.requires_grad(); }
bool requires_grad(const OptTensor& t) { return t.has_value() && t->requires_grad(); }

// Whether a call records a node: otherwise it runs below autograd with nothing saved.
template <class... Tensors>
bool recorded(const Tensors&... differentiable) {
  return at::GradMode::is_enabled() && (requires_grad(differentiable) || ...);
}

// Without a node to record, each op goes straight to the kernel after autograd (the keys
// below it), as ATen's generated autograd kernels do.
Tensor task_linear(c10::DispatchKeySet keys, const Tensor& x, const Tensor& weight,
                   const Tensor& owner, int64_t task, const OptTensor& tasks,
                   const OptTensor& order, const OptTensor& offsets, const OptTensor& bias,
                   const OptTensor& out_mask, int64_t backend) {
  if (recorded(x, weight, bias, out_mask))
    return TaskLinear::apply(x, weight, owner, task, tasks, order, offsets, bias, out_mask, backend);
  return ops::task_linear().redispatch(keys & c10::after_autograd_keyset, x, weight, owner, task,
                                       tasks, order, offsets, bias, out_mask, backend);
}

Tensor masked_linear(c10::DispatchKeySet keys, const Tensor& x, const Tensor& weight,
                     const Tensor& mask, const OptTensor& trainable, const OptTensor& bias,
                     const OptTensor& out_mask, int64_t backend) {
  if (recorded(x, weight, mask, bias, out_mask))
    return MaskedLinear::apply(x, weight, mask, trainable, bias, out_mask, backend);
  return ops::masked_linear().redispatch(keys & c10::after_autograd_keyset, x, weight, mask,
                                         trainable, bias, out_mask, backend);
}

Tensor task_conv2d(c10::DispatchKeySet keys, const Tensor& x, const Tensor& weight,
                   const Tensor& owner, int64_t task, const OptTensor& tasks,
                   const OptTensor& order, const OptTensor& offsets, const OptTensor& bias,
                   const OptTensor& out_mask, at::IntArrayRef stride, at::IntArrayRef padding,
                   at::IntArrayRef dilation, int64_t groups, int64_t backend) {
  if (recorded(x, weight, bias, out_mask))
    return TaskConv2d::apply(x, weight, owner, task, tasks, order, offsets, bias, out_mask, stride,
                             padding, dilation, groups, backend);
  return ops::task_conv2d().redispatch(keys & c10::after_autograd_keyset, x, weight, owner, task,
                                       tasks, order, offsets, bias, out_mask, stride, padding,
                                       dilation, groups, backend);
}

Tensor masked_conv2d(c10::DispatchKeySet keys, const Tensor& x, const Tensor& weight,
                     const Tensor& mask, const OptTensor& trainable, const OptTensor& bias,
                     const OptTensor& out_mask, at::IntArrayRef stride, at::IntArrayRef padding,
                     at::IntArrayRef dilation, int64_t groups, int64_t backend) {
  if (recorded(x, weight, mask, bias, out_mask))
    return MaskedConv2d::apply(x, weight, mask, trainable, bias, out_mask, stride, padding,
                               dilation, groups, backend);
  return ops::masked_conv2d().redispatch(keys & c10::after_autograd_keyset, x, weight, mask,
                                         trainable, bias, out_mask, stride, padding, dilation,
                                         groups, backend);
}

}  // namespace

TORCH_LIBRARY_IMPL(maskops, Autograd, m) {
  m.impl("task_linear", &task_linear);
  m.impl("masked_linear", &masked_linear);
  m.impl("task_conv2d", &task_conv2d);
  m.impl("masked_conv2d", &masked_conv2d);
  for (const char* name : {"linear_grad_input", "linear_grad_weight", "conv2d_grad_input",
                           "conv2d_grad_weight"})
    m.impl(name, torch::autograd::autogradNotImplementedFallback());
}

}  // namespace maskops
