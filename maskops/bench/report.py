"""Results: the JSON file (environment header + result rows) and the Markdown table.

A result row is a dict with keys op, case, dtype, pattern, density, impl,
median_ms, gbps (None unless the case is memory-bound), and optionally
timer, rel_err (vs the cached output), weight_mb (deployment study), error.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import re

import torch

from maskops import isa


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def short_name(device_label: str) -> str:
    """'AMD EPYC' -> 'amd-epyc': a file-name-safe device label."""
    return re.sub(r"[^a-z0-9]+", "-", device_label.lower()).strip("-") or "cpu"


def load_average() -> float:
    """1-minute load: other work on the machine skews CPU timings, this says how much there was."""
    return os.getloadavg()[0]


def environment(device: str) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        "load_average": load_average(),
        # The cpu backend's loops: the instruction set they ran with (MASKOPS_CPU_ISA can lower
        # it) and the ones this CPU offers.
        "cpu_isa": isa.active(),
        "cpu_isas": isa.supported(),
    }


def write_json(path: str, header: dict, results: list) -> None:
    with open(path, "w") as out:
        json.dump({**header, "results": results}, out, indent=1)
        out.write("\n")


def setting_key(row: dict) -> tuple:
    return row["case"], row["dtype"], row["pattern"], row["density"]


def times_by_setting(results: list) -> dict:
    times = {}
    for row in results:
        if row.get("median_ms"):
            times.setdefault(setting_key(row), {})[row["impl"]] = row["median_ms"]
    return times


def _num(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def format_table(results: list) -> str:
    """Markdown table: one line per result row, with speedups against naive and cached.

    `speedup vs naive` = naive ms / impl ms (for mixed-task batches the baseline is
    `loop`); `ratio vs cached` = cached ms / impl ms, so 1.0 means as fast as the
    pre-masked dense copy.
    """
    times = times_by_setting(results)
    extra = [(key, title) for key, title in (("gbps", "GB/s"), ("weight_mb", "weight MB"))
             if any(row.get(key) is not None for row in results)]
    header = ["case", "dtype", "pattern", "density", "impl", "median ms", "speedup vs naive",
              "ratio vs cached"] + [title for _, title in extra]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results:
        group = times.get(setting_key(row), {})
        ms = row.get("median_ms")
        base = group.get("naive", group.get("loop"))
        cached = group.get("cached")
        cells = [row["case"], row["dtype"], row["pattern"] or "", _num(row["density"], 3),
                 row["impl"], _num(ms) if ms else "error",
                 _num(base / ms, 3) if ms and base else "",
                 _num(cached / ms, 3) if ms and cached else ""]
        cells += [_num(row.get(key)) for key, _ in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
