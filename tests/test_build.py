"""The build: the CUDA binding layer compiles against torch's headers here (no GPU, no CUDA
torch needed), so a change to it is checked before it reaches a GPU machine."""
import os
import shutil
import subprocess
import sysconfig

import pytest
import torch.utils.cpp_extension as cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cuda_include():
    nvcc = shutil.which("nvcc")
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME,
             nvcc and os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"]
    for home in filter(None, homes):
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return os.path.join(home, "include")
    return None


@pytest.mark.skipif(_cuda_include() is None or shutil.which("g++") is None,
                    reason="needs a CUDA toolkit's headers and g++")
def test_cuda_binding_layer_compiles(tmp_path):
    # CPU builds of torch ship c10/cuda headers but not the header CMake generates for them.
    (tmp_path / "c10" / "cuda" / "impl").mkdir(parents=True)
    (tmp_path / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").write_text("#pragma once\n")
    includes = [ROOT, str(tmp_path), _cuda_include(), sysconfig.get_paths()["include"]]
    includes += cpp_extension.include_paths()
    command = ["g++", "-std=c++20", "-fsyntax-only", "-Wall", "-DMASKOPS_WITH_CUDA",
               *[f"-I{path}" for path in includes], os.path.join(ROOT, "python", "cuda_ops.cpp")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
