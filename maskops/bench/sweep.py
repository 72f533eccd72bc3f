"""The op sweep: cases x dtypes x (pattern, density) x implementations, timed side by side."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

import maskops
from maskops.bench import impls as impl_defs
from maskops.bench.cases import Case, make_inputs
from maskops.bench.progress import progress
from maskops.bench.timing import Timing

# Relative L2 error vs the cached output above which a result is flagged as wrong;
# whole models (many layers of rounding) get ten times more.
TOLERANCE = {"float64": 1e-9, "float32": 1e-4, "float16": 5e-3, "bfloat16": 2e-2}
MODEL_TOLERANCE_FACTOR = 10
COPY_MIB = {"cuda": 256, "cpu": 64}


def rel_err(y: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double()
    return float((y.double() - expected).norm() / expected.norm().clamp_min(1e-30))


def is_wrong(row: dict) -> bool:
    if "rel_err" not in row:
        return False
    factor = MODEL_TOLERANCE_FACTOR if row["op"] == "model" else 1
    return row["rel_err"] > TOLERANCE[row["dtype"]] * factor


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def measure(impl: impl_defs.Impl, timer: Callable, expected: Optional[torch.Tensor]) -> dict:
    """median_ms, timer and rel_err of one implementation; error instead if it fails."""
    with maskops.use_backend(impl.backend):
        try:
            y = impl.fn()
            timing: Timing = timer(impl.fn)
        except Exception as error:  # one failing backend must not end the sweep
            return {"median_ms": None, "gbps": None, "error": f"{type(error).__name__}: {error}"}
    row = {"median_ms": timing.median_ms, "gbps": None, "timer": timing.method}
    if expected is not None:
        row["rel_err"] = rel_err(y, expected)
    return row


def settings(case: Case, quick: bool, patterns: Optional[Sequence[str]],
             densities: Optional[Sequence[float]]) -> list:
    if densities:
        pairs = [(p, d) for p in (patterns or ("random", "block")) for d in densities]
    else:
        pairs = case.sweep_settings(quick)
    return [(p, d) for p, d in pairs if not patterns or p in patterns]


def copy_row(device: str, timer: Callable) -> dict:
    """Measured device copy bandwidth (read + write), for bandwidth fractions."""
    mib = COPY_MIB[device]
    src = torch.empty(mib << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timing = timer(lambda: dst.copy_(src))
    return {"op": "copy", "case": f"copy_{mib}MiB", "dtype": "uint8", "pattern": None,
            "density": None, "impl": "copy", "median_ms": timing.median_ms,
            "gbps": 2 * src.numel() / timing.median_ms / 1e6, "timer": timing.method}


def sweep_case(case: Case, dtype: torch.dtype, pattern: str, density: float, device: str,
               names: Sequence[str], timer: Callable, on_done: Callable[[], None]) -> list:
    inputs = make_inputs(case, pattern, density, dtype, device)
    expected = impl_defs.build("cached", case, inputs).fn()
    rows = []
    for name in names:
        row = {"op": case.op, "case": case.name, "dtype": dtype_name(dtype), "pattern": pattern,
               "density": density, "impl": name}
        row.update(measure(impl_defs.build(name, case, inputs), timer, expected))
        if row["median_ms"] and case.memory_bound(dtype):
            moved = case.bytes(dtype, with_mask=name != "cached")
            row["gbps"] = moved / row["median_ms"] / 1e6
        rows.append(row)
        on_done()
    return rows


def run(cases: Sequence[Case], dtypes: Sequence[torch.dtype], device: str, timer: Callable, *,
        quick: bool = False, impls: Optional[Sequence[str]] = None,
        patterns: Optional[Sequence[str]] = None, densities: Optional[Sequence[float]] = None,
        show_progress: bool = True) -> list:
    """Result rows for every case, dtype, (pattern, density) and implementation, plus a copy row."""
    plan = []
    for case in cases:
        for dtype in dtypes:
            names = [n for n in impl_defs.impl_names(case, device, dtype) if not impls or n in impls]
            plan += [(case, dtype, p, d, names) for p, d in settings(case, quick, patterns, densities)]
    results = []
    with progress(1 + sum(len(step[-1]) for step in plan), show_progress) as bar:
        for case, dtype, pattern, density, names in plan:
            bar.set_postfix_str(f"{case.name} {pattern} {density:.2f}")
            results += sweep_case(case, dtype, pattern, density, device, names, timer, bar.update)
        results.append(copy_row(device, timer))
        bar.update()
    return results
