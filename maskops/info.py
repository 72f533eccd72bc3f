"""`maskops info`: versions, what the native extension was built with, and the backends here."""
from __future__ import annotations

import argparse
import json
import platform

import torch

import maskops


def extension_info() -> dict:
    """Build facts of maskops._C, or why it cannot be loaded."""
    try:
        from maskops import _C
    except ImportError as error:
        return {"built": False, "error": str(error)}
    return {
        "built": True,
        "cuda": bool(_C.with_cuda),
        "cuda_archs": _C.cuda_archs,
        "openmp": bool(_C.with_openmp),
        "cpu_threads": _C.max_threads(),
        "cpu_isa": _C.cpu_isa(),
        "cpu_isas": list(_C.cpu_isas()),
        "compiler": _C.compiler,
    }


def collect() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "maskops": maskops.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cuda_device": torch.cuda.get_device_name() if cuda else None,
        "extension": extension_info(),
        "available_backends": maskops.available_backends(),
    }


def _print(info: dict) -> None:
    ext = info["extension"]
    print(f"maskops {info['maskops']}  torch {info['torch']} (CUDA {info['torch_cuda'] or 'none'})"
          f"  python {info['python']}")
    print(f"GPU: {info['cuda_device'] or 'none'}")
    if not ext["built"]:
        print(f"native extension maskops._C: not built ({ext['error']}); "
              f"build it with `python setup.py build_ext --inplace`")
    else:
        cuda = f"yes (archs {ext['cuda_archs']})" if ext["cuda"] else "no"
        openmp = "on" if ext["openmp"] else "off"
        print(f"native extension maskops._C: CPU kernels (OpenMP {openmp}, "
              f"{ext['cpu_threads']} threads, {ext['cpu_isa']} loops of {'/'.join(ext['cpu_isas'])}); "
              f"CUDA kernels: {cuda}; compiler {ext['compiler']}")
    print(f"available backends: {', '.join(info['available_backends'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maskops info",
                                     description="Show versions, build options and backends.")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print(info)
    return 0
