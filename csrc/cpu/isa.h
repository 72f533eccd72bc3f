// The instruction set the hand-written CPU loops run with, chosen at run time: the same
// kernels (fused.h) are compiled once per instruction set, and the best one this CPU runs is
// used unless a lower one is asked for.
#pragma once

#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MASKOPS_HAVE_X86_KERNELS 1
#endif

namespace maskops::cpu {

// In order: each runs wherever the one above it runs.  generic: portable vector code (any
// CPU the compiler targets); avx2: AVX2 + FMA; avx512: AVX-512 F/BW/VL/DQ; avx512bf16: the
// same, with bfloat16 weights multiplied by AVX-512 BF16 dot products.
enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2, avx512bf16 = 3 };

const char* isa_name(Isa isa);
// The instruction sets this CPU (and this build) can run, lowest first.
std::vector<Isa> supported_isas();
// What the kernels use now: the best supported one, or what set_isa chose.
Isa active_isa();
// Use `isa`, or the best supported one below it; returns the one now active.
Isa set_isa(Isa isa);

// Whether the CPU computes in fp16 natively (AVX-512 FP16), so that fp16 matrix products run
// at least as fast as fp32 ones.
bool cpu_has_fp16_arithmetic();

}  // namespace maskops::cpu
