// The fused loops (fused.h) compiled for the avx512 instruction set (isa.h).
#include "isa.h"

#ifdef MASKOPS_HAVE_X86_KERNELS
#define MASKOPS_ISA avx512
#define MASKOPS_BF16_DOT 1  // the avx512bf16 level (isa.h) runs in this copy
#include "simd_avx512.h"
#include "fused.h"
#endif
