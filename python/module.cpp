// The Python module maskops._C: loading it registers the native ops (ops.cpp and the
// per-device files); its attributes say what this build contains.
#include <pybind11/pybind11.h>

#include "csrc/cpu/avx2.h"
#include "csrc/cpu/parallel.h"

#ifndef MASKOPS_CUDA_ARCHS
#define MASKOPS_CUDA_ARCHS ""
#endif

#if defined(__clang__)
#define MASKOPS_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define MASKOPS_COMPILER "gcc " __VERSION__
#else
#define MASKOPS_COMPILER "unknown"
#endif

namespace py = pybind11;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "maskops native kernels (CPU, and CUDA when built with it)";
#ifdef MASKOPS_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("cuda_archs") = MASKOPS_CUDA_ARCHS;  // e.g. "8.0;9.0a"
  m.attr("compiler") = MASKOPS_COMPILER;
  m.attr("with_openmp") = maskops::cpu::openmp_enabled();
  m.def("max_threads", &maskops::cpu::max_threads,
        "Threads the CPU kernels use (OpenMP's current maximum).");
  m.def("avx2_enabled", &maskops::cpu::avx2_enabled,
        "Whether the CPU kernels use their AVX2 versions (the CPU has AVX2 and FMA).");
  m.def("set_avx2_enabled", &maskops::cpu::set_avx2_enabled, py::arg("enabled"),
        "Use the AVX2 CPU kernels where the CPU has them (True) or the portable ones (False).");
}
