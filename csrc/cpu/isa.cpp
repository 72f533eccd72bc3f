#include "isa.h"

#include <atomic>

namespace maskops::cpu {

namespace {

bool cpu_runs(Isa isa) {
#ifdef MASKOPS_HAVE_X86_KERNELS
  switch (isa) {
    case Isa::avx512bf16:
      return __builtin_cpu_supports("avx512bf16") && cpu_runs(Isa::avx512);
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             cpu_runs(Isa::avx2);
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default:
      return true;
  }
#else
  return isa == Isa::generic;
#endif
}

Isa best_isa() {
  for (Isa isa : {Isa::avx512bf16, Isa::avx512, Isa::avx2})
    if (cpu_runs(isa)) return isa;
  return Isa::generic;
}

std::atomic<int> active{int(best_isa())};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512bf16: return "avx512bf16";
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512bf16})
    if (cpu_runs(isa)) out.push_back(isa);
  return out;
}

bool cpu_has_fp16_arithmetic() {
#ifdef MASKOPS_HAVE_X86_KERNELS
  return __builtin_cpu_supports("avx512fp16");
#else
  return false;
#endif
}

Isa active_isa() { return Isa(active.load(std::memory_order_relaxed)); }

Isa set_isa(Isa isa) {
  while (!cpu_runs(isa)) isa = Isa(int(isa) - 1);
  active = int(isa);
  return isa;
}

}  // namespace maskops::cpu
