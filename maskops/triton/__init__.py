"""Triton kernels of the `triton` backend (see maskops/backends/triton_backend.py).

tiles.py        jit building blocks: mask kinds, weight-mask loads, row gathers, epilogue
matmul.py       the masked GEMM and weight-gradient kernels, and the linear ops
conv.py         conv2d forward / input grad / weight grad as implicit GEMM over NHWC
groups.py       rows of a mixed-task batch sorted into single-task tiles (one launch)
masks.py        the weight-side mask operand: layout, mask kind, tile plan
materialize.py  the masked weight as a tensor, for cuBLAS/cuDNN on compute-bound shapes
launch.py       configs, autotuning, the interpreter's rules
"""
