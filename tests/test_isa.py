"""maskops.isa: the instruction set of the cpu backend's loops, chosen at run time."""
import os
import subprocess
import sys

import pytest

import maskops
from maskops import info, isa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _in_subprocess(code, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT, **env})


def test_the_best_supported_instruction_set_is_active_by_default():
    result = _in_subprocess("import maskops; print(maskops.isa.active(), maskops.isa.supported())",
                            MASKOPS_CPU_ISA="")
    assert result.returncode == 0, result.stderr
    active, supported = result.stdout.split(" ", 1)
    assert eval(supported)[-1] == active and "generic" in supported


def test_use_switches_and_refuses_unknown_names():
    before = isa.active()
    try:
        assert isa.use("generic") == "generic" and isa.active() == "generic"
        assert info.collect()["extension"]["cpu_isa"] == "generic"
    finally:
        isa.use(before)
    with pytest.raises(ValueError, match="expected one of generic, avx2, avx512, avx512bf16"):
        isa.use("sse9")


@pytest.mark.skipif("avx512bf16" in isa.supported(), reason="this CPU runs every instruction set")
def test_asking_for_a_missing_instruction_set_falls_back_with_a_warning():
    before = isa.active()
    try:
        with pytest.warns(RuntimeWarning, match="does not run avx512bf16"):
            assert isa.use("avx512bf16") == isa.supported()[-1]
    finally:
        isa.use(before)


def test_the_environment_variable_caps_the_instruction_set():
    result = _in_subprocess("import maskops; print(maskops.isa.active())", MASKOPS_CPU_ISA="generic")
    assert result.returncode == 0 and result.stdout.strip() == "generic", result.stderr
    result = _in_subprocess("import maskops", MASKOPS_CPU_ISA="avx1024")
    assert result.returncode != 0 and "MASKOPS_CPU_ISA='avx1024'" in result.stderr
