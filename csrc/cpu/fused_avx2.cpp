// The fused loops (fused.h) compiled for the avx2 instruction set (isa.h).
#include "isa.h"

#ifdef MASKOPS_HAVE_X86_KERNELS
#define MASKOPS_ISA avx2
#include "simd_avx2.h"
#include "fused.h"
#endif
