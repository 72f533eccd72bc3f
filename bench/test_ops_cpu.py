"""pytest-benchmark: the CPU ops, naive vs cached vs each CPU backend, one group per case.

Run with `pytest bench/ --benchmark-only`; every benchmark also checks its output.
"""
import pytest
import torch

import maskops
from maskops.bench.cases import Case, make_inputs
from maskops.bench.impls import build, impl_names
from maskops.bench.sweep import TOLERANCE, rel_err

DENSITY = 2 / 3
CASES = (
    Case("linear_m1_n1024_k1024", "linear", n=1024, k=1024, m=1),
    Case("linear_m64_n1024_k1024", "linear", n=1024, k=1024, m=64),
    Case("linear_m16_n4096_k4096", "linear", n=4096, k=4096, m=16),
    Case("linear_mixed4_m16_n1024_k1024", "linear", n=1024, k=1024, m=16, tasks=4),
    Case("conv_3x3_c64_h14_b4", "conv2d", n=64, k=64, batch=4, size=14),
)
PARAMS = [pytest.param(case, impl, id=f"{case.name}-{impl}")
          for case in CASES for impl in impl_names(case, "cpu", torch.float32)]


@pytest.mark.parametrize("case, impl", PARAMS)
def test_op(benchmark, case, impl):
    inputs = make_inputs(case, "random", DENSITY, torch.float32, "cpu")
    expected = build("cached", case, inputs).fn()
    run = build(impl, case, inputs)
    benchmark.group = case.name
    with maskops.use_backend(run.backend):
        y = benchmark(run.fn)
    assert rel_err(y, expected) < TOLERANCE["float32"]
