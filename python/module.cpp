// The Python module maskops._C: loading it registers the ops (ops.cpp and the kernel files);
// its attributes give the shared definitions of csrc/modes.h, the argument checks for the fake
// kernels, routing, and what this build contains.
#include <torch/extension.h>

#include "args.h"
#include "csrc/cpu/isa.h"
#include "csrc/cpu/parallel.h"
#include "entries.h"
#include "kernels.h"
#include "owner_cache.h"
#include "python_backends.h"
#include "routing.h"

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
  using namespace maskops;
  m.doc() = "maskops native kernels (CPU, and CUDA when built with it)";

  py::dict modes;
  modes["dense"] = int(Mode::dense);
  modes["visible"] = int(Mode::visible);
  modes["trainable"] = int(Mode::trainable);
  modes["mask"] = int(Mode::mask);
  modes["bits"] = int(Mode::bits);
  m.attr("modes") = modes;
  py::dict backends;
  for (Backend b : {Backend::automatic, Backend::torch, Backend::cpu, Backend::triton, Backend::cuda})
    backends[backend_name(b)] = int64_t(b);
  m.attr("backends") = backends;
  py::dict limits;
  limits["max_task"] = kMaxTask;
  limits["task_ids"] = kTaskIds;
  limits["gpu_few_rows"] = kGpuFewRows;
  m.attr("limits") = limits;

  bind_entries(m);
  m.def("check_task_linear", &check_task_linear);
  m.def("check_masked_linear", &check_masked_linear);
  m.def("check_task_conv2d", &check_task_conv2d);
  m.def("check_masked_conv2d", &check_masked_conv2d);
  m.def("route", &route, py::arg("task"), py::arg("device") = py::none(),
        "Per-sample task ids as (task int32, order int64, offsets int64 on the CPU).");
  m.def("cached_visible_bits", &cached_visible_bits, py::arg("owner"), py::arg("task"),
        "pack_visible(owner, task), built once per owner version and task.");
  m.def("cached_visible_blocks", &cached_visible_blocks, py::arg("owner"), py::arg("task"),
        "The 32 x 64 blocks of a 2-D CPU owner map that hold a weight visible to task, cached.");
  m.def("set_python_bridge", &set_python_bridge,
        "Where the ops hand calls of the torch and triton backends (maskops does this).");

#ifdef MASKOPS_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("cuda_archs") = MASKOPS_CUDA_ARCHS;  // e.g. "8.0;9.0a"
  m.attr("compiler") = MASKOPS_COMPILER;
  m.attr("with_openmp") = cpu::openmp_enabled();
  m.def("max_threads", &cpu::max_threads,
        "Threads the CPU kernels use (OpenMP's current maximum).");
  m.def("cpu_isa", [] { return std::string(cpu::isa_name(cpu::active_isa())); },
        "The instruction set the CPU kernels' hand-written loops use now.");
  m.def("cpu_isas", [] {
          std::vector<std::string> names;
          for (cpu::Isa isa : cpu::supported_isas()) names.push_back(cpu::isa_name(isa));
          return names;
        }, "The instruction sets this CPU runs, lowest first.");
  m.def("set_cpu_isa", [](const std::string& name) {
          for (cpu::Isa isa : {cpu::Isa::generic, cpu::Isa::avx2, cpu::Isa::avx512,
                               cpu::Isa::avx512bf16})
            if (name == cpu::isa_name(isa)) return std::string(cpu::isa_name(cpu::set_isa(isa)));
          throw py::value_error("unknown CPU instruction set '" + name +
                                "': expected generic, avx2, avx512 or avx512bf16");
        }, py::arg("name"),
        "Use this instruction set, or the best one this CPU runs below it; returns the one used.");
}
