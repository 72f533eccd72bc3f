// The torch and triton backends are Python (maskops/backends/bridge.py); op kernels reach them
// through the Kernels interface below, which hands each call, with its selection spelled out,
// to the function maskops registers when it is imported.
#include <torch/extension.h>

#include <vector>

#include "kernels.h"
#include "python_backends.h"

namespace maskops {
namespace {

namespace py = pybind11;

// Never destroyed: it must outlive every call, and Python may be gone at process exit.
py::object* bridge = nullptr;

OptTensor optional(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// Arguments as Python sees them (called with the GIL held).
template <class T>
const T& to_python(const T& value) {
  return value;
}
py::tuple to_python(const ConvGeometry& g) {
  return py::make_tuple(g.stride, g.padding, g.dilation, g.groups);
}
std::vector<int64_t> to_python(at::IntArrayRef shape) { return shape.vec(); }

class PythonKernels final : public Kernels {
 public:
  explicit PythonKernels(Backend backend) : backend_(backend) {}

  Tensor linear_forward(const Tensor& x, const Tensor& weight, const Selection& s,
                        int64_t rows_per_sample, const OptTensor& bias,
                        const OptTensor& out_mask) const override {
    return call("linear_forward", s, rows_per_sample, x, weight, bias, out_mask);
  }
  Tensor linear_grad_input(const Tensor& grad, const Tensor& weight, const Selection& s,
                           int64_t rows_per_sample) const override {
    return call("linear_grad_input", s, rows_per_sample, grad, weight);
  }
  Tensor linear_grad_weight(const Tensor& grad, const Tensor& x, const Selection& s,
                            int64_t rows_per_sample) const override {
    return call("linear_grad_weight", s, rows_per_sample, grad, x);
  }
  Tensor conv2d_forward(const Tensor& x, const Tensor& weight, const Selection& s,
                        const OptTensor& bias, const OptTensor& out_mask,
                        const ConvGeometry& g) const override {
    return call("conv2d_forward", s, 1, x, weight, bias, out_mask, g);
  }
  Tensor conv2d_grad_input(const Tensor& grad, const Tensor& weight, const Selection& s,
                           at::IntArrayRef input_shape, const ConvGeometry& g) const override {
    return call("conv2d_grad_input", s, 1, grad, weight, input_shape, g);
  }
  Tensor conv2d_grad_weight(const Tensor& grad, const Tensor& x, const Selection& s,
                            at::IntArrayRef weight_shape, const ConvGeometry& g) const override {
    return call("conv2d_grad_weight", s, 1, grad, x, weight_shape, g);
  }

 private:
  // bridge(op, backend, selection, rows_per_sample, *arguments) -> Tensor
  template <class... Args>
  Tensor call(const char* op, const Selection& s, int64_t rows_per_sample,
              const Args&... args) const {
    py::gil_scoped_acquire gil;
    TORCH_CHECK(bridge != nullptr, "maskops: the '", backend_name(backend_),
                "' backend runs in Python; import maskops before calling its ops");
    const Routing& r = s.routing;
    const py::tuple selection =
        py::make_tuple(int(s.mode), optional(s.owner), optional(s.mask), s.task, optional(r.task),
                       optional(r.order), optional(r.offsets));
    return (*bridge)(op, int64_t(backend_), selection, rows_per_sample, to_python(args)...)
        .template cast<Tensor>();
  }

  Backend backend_;
};

}  // namespace

const Kernels& python_kernels(Backend backend) {
  static const PythonKernels automatic(Backend::automatic), torch(Backend::torch),
      triton(Backend::triton);
  switch (backend) {
    case Backend::torch: return torch;
    case Backend::triton: return triton;
    default: return automatic;
  }
}

void set_python_bridge(py::object function) {
  if (bridge == nullptr) bridge = new py::object();
  *bridge = std::move(function);
}

}  // namespace maskops
