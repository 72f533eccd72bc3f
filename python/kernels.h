// The implementations an op call can run: the native kernels of a device (cpu_ops.cpp,
// cuda_ops.cpp), or a Python backend (python_backends.cpp hands the call to
// maskops/backends/bridge.py).  dispatch.cpp picks one per call with `kernels_for`.
//
// Kernels get checked arguments: contiguous weights (or channels_last conv weights, for kernels
// that read them), an owner or mask in its weight's layout, linear inputs flattened to rows,
// non-empty problems, an out_mask in x's dtype with one row per input row (or per channel).
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "args.h"

namespace maskops {

// The `backend` argument of the ops; maskops.use_backend passes it (0 when unset).
enum class Backend : int64_t { automatic = 0, torch = 1, cpu = 2, triton = 3, cuda = 4 };

const char* backend_name(Backend b);

class Kernels {
 public:
  virtual ~Kernels() = default;

  // x (M, K), weight (N, K) -> (M, N).  With s.routing, sample i of the routing is rows
  // [i * rows_per_sample, (i + 1) * rows_per_sample) of x.  bias (N,); out_mask (N,) or (M, N).
  virtual Tensor linear_forward(const Tensor& x, const Tensor& weight, const Selection& s,
                                int64_t rows_per_sample, const OptTensor& bias,
                                const OptTensor& out_mask) const = 0;
  // grad (M, N) @ w_eff (N, K) -> (M, K).
  virtual Tensor linear_grad_input(const Tensor& grad, const Tensor& weight, const Selection& s,
                                   int64_t rows_per_sample) const = 0;
  // grad (M, N)^T x (M, K) restricted to the selection of each row -> (N, K).
  virtual Tensor linear_grad_weight(const Tensor& grad, const Tensor& x, const Selection& s,
                                    int64_t rows_per_sample) const = 0;

  // x (B, C, H, W) in any memory format; the result keeps x's format.  out_mask (Cout,) or (B, Cout).
  virtual Tensor conv2d_forward(const Tensor& x, const Tensor& weight, const Selection& s,
                                const OptTensor& bias, const OptTensor& out_mask,
                                const ConvGeometry& g) const = 0;
  virtual Tensor conv2d_grad_input(const Tensor& grad, const Tensor& weight, const Selection& s,
                                   at::IntArrayRef input_shape, const ConvGeometry& g) const = 0;
  // The weight gradient is contiguous; it is computed in the layout of the selection's owner
  // or mask.
  virtual Tensor conv2d_grad_weight(const Tensor& grad, const Tensor& x, const Selection& s,
                                    at::IntArrayRef weight_shape, const ConvGeometry& g) const = 0;

  // Whether conv weights that are channels_last (model.to(memory_format=torch.channels_last))
  // reach these kernels as they are, with owners and masks in the same layout, instead of
  // as contiguous copies made on every call.
  virtual bool reads_channels_last_weights() const { return false; }
};

// Native kernels of one device type, for the dtypes they support.
struct NativeKernels {
  const Kernels* kernels;
  bool (*supports)(at::ScalarType dtype);
};

// Called once per device type by the file that implements its kernels.
struct RegisterNativeKernels {
  RegisterNativeKernels(c10::DeviceType type, NativeKernels native);
};

// The kernels a call with `backend` runs on tensors like `like`: the device's native ones
// (automatic, where they support the dtype; cpu; cuda) or a Python backend's.  Raises if an
// explicitly named backend cannot run them.
const Kernels& kernels_for(int64_t backend, const Tensor& like);

// The Python backends (automatic: the first of triton and torch that supports the tensors).
const Kernels& python_kernels(Backend backend);

}  // namespace maskops
