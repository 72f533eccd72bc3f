// The fused loops (fused.h) compiled for the generic instruction set (isa.h).
#include "isa.h"
#define MASKOPS_ISA generic
#include "simd_generic.h"
#include "fused.h"
