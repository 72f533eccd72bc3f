"""The instruction set of the cpu backend's hand-written loops.

The same loops are compiled for each instruction set (generic portable vectors, AVX2, AVX-512,
AVX-512 with BF16 dot products for bfloat16 weights)
and the best one this CPU runs is chosen when maskops loads.  ``MASKOPS_CPU_ISA=avx2`` (or
``generic``) in the environment, or :func:`use`, asks for a lower one, e.g. to compare paths;
asking for one the CPU lacks gives the best one below it, with a warning.
"""
from __future__ import annotations

import os
import warnings

from maskops.modes import _C

ENVIRONMENT = "MASKOPS_CPU_ISA"
# Lowest first: each runs where the next one runs.  avx512bf16 multiplies bfloat16 weights with
# AVX-512 BF16 dot products; otherwise it is avx512.
NAMES = ("generic", "avx2", "avx512", "avx512bf16")


def supported() -> list[str]:
    """The instruction sets this CPU runs, lowest first."""
    return list(_C.cpu_isas())


def active() -> str:
    """The instruction set the loops use now."""
    return _C.cpu_isa()


def use(name: str) -> str:
    """Run the loops with instruction set `name`; returns the one now used."""
    if name not in NAMES:
        raise ValueError(f"unknown CPU instruction set {name!r}: expected one of {', '.join(NAMES)}")
    chosen = _C.set_cpu_isa(name)
    if chosen != name:
        warnings.warn(f"this CPU does not run {name} (it runs {', '.join(supported())}): "
                      f"using {chosen}", RuntimeWarning, stacklevel=2)
    return chosen


def _from_environment() -> None:
    name = os.environ.get(ENVIRONMENT, "").strip().lower()
    if name:
        if name not in NAMES:
            raise ValueError(f"{ENVIRONMENT}={name!r}: expected one of {', '.join(NAMES)}")
        use(name)


_from_environment()
