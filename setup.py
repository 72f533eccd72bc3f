"""Builds maskops and its native extension maskops._C.

The CPU kernels are always built.  The CUDA kernels are built when torch has CUDA and
nvcc is found; MASKOPS_CUDA=0/1 forces the choice.  CUDA architectures come from
TORCH_CUDA_ARCH_LIST (default "8.0;9.0a").

    python setup.py build_ext --inplace      # or: pip install -e . --no-build-isolation
"""
import glob
import os
import shutil

import torch
from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0a"


def sources(pattern, exclude=()):
    found = sorted(glob.glob(os.path.join(ROOT, pattern)))
    return [os.path.relpath(f, ROOT) for f in found
            if not any(os.path.basename(f).startswith(prefix) for prefix in exclude)]


def want_cuda() -> bool:
    forced = os.environ.get("MASKOPS_CUDA")
    if forced is not None:
        return forced.strip() not in ("", "0", "false", "no")
    home = cpp_extension.CUDA_HOME
    nvcc = shutil.which("nvcc") or (home and os.path.exists(os.path.join(home, "bin", "nvcc")))
    return torch.version.cuda is not None and bool(nvcc)


def extension():
    cxx = ["-O3", "-g0", "-fopenmp"]
    files = sources("python/*.cpp", exclude=("cuda_",)) \
        + sources("csrc/cpu/*.cpp", exclude=("test_",))
    kwargs = dict(include_dirs=[ROOT], extra_link_args=["-fopenmp"], libraries=["gomp"])
    if not want_cuda():
        return cpp_extension.CppExtension("maskops._C", files, extra_compile_args={"cxx": cxx},
                                          **kwargs)
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    defines = ["-DMASKOPS_WITH_CUDA", f'-DMASKOPS_CUDA_ARCHS="{archs}"']
    files += sources("python/cuda_*.cpp") + sources("csrc/cuda/*.cu")
    nvcc = ["-O3"] + defines
    return cpp_extension.CUDAExtension("maskops._C", files,
                                       extra_compile_args={"cxx": cxx + defines, "nvcc": nvcc},
                                       **kwargs)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
