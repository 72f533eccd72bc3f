"""Speedup vs density, one panel per case and dtype, one line per implementation and pattern:
against naive masking (or the loop, for mixed batches), or against the dense op on a
pre-masked copy (`vs="cached"`: above 1 only where kernels skip what a task cannot see)."""
from __future__ import annotations

import math

from matplotlib.figure import Figure  # no pyplot: no GUI backend, works headless
from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

from maskops.bench.report import times_by_setting

COLUMNS = 3
BASELINES = ("naive", "loop")


def speedups(results: list, vs: str = "naive") -> dict:
    """{(case, dtype): {(impl, pattern): [(density, speedup vs the baseline), ...]}}"""
    baselines = BASELINES if vs == "naive" else ("cached",)
    panels = {}
    for (case, dtype, pattern, density), group in times_by_setting(results).items():
        base = next((group[b] for b in baselines if b in group), None)
        if base is None or density is None:
            continue
        for impl, ms in group.items():
            if impl not in BASELINES + ("cached",):
                panels.setdefault((case, dtype), {}).setdefault((impl, pattern), []).append(
                    (density, base / ms))
    return panels


def plot(results: list, path: str, vs: str = "naive") -> None:
    panels = speedups(results, vs)
    if not panels:
        raise ValueError(f"no results with a {vs} baseline to plot")
    impls = sorted({impl for lines in panels.values() for impl, _ in lines})
    colors = {impl: f"C{i}" for i, impl in enumerate(impls)}
    rows, columns = math.ceil(len(panels) / COLUMNS), min(COLUMNS, len(panels))
    figure = Figure(figsize=(4.5 * columns, 3.5 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for ax, ((case, dtype), lines) in zip(axes, panels.items()):
        ax.axhline(1.0, color="grey", linewidth=0.8,
                   label="baseline (naive / loop)" if vs == "naive" else "dense (cached copy)")
        for (impl, pattern), points in sorted(lines.items()):
            points.sort()
            ax.plot([d for d, _ in points], [s for _, s in points], marker="o", color=colors[impl],
                    linestyle="-" if pattern == "random" else "--", label=f"{impl} ({pattern})")
        ax.set_xlim(0, 1.05)
        ax.set_yscale("log")
        low, high = ax.get_ylim()  # at least 0.5x..2x, so near-1 panels still read as such
        ax.set_ylim(min(low, 0.5), max(high, 2.0))
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{case} ({dtype})", fontsize=9)
        ax.set_xlabel("density (fraction of weights visible)")
        ax.set_ylabel("speedup vs " + ("baseline" if vs == "naive" else "dense"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.savefig(path, dpi=120)


def latencies(results: list) -> dict:
    """Deployment study rows: {(dtype, pattern, served, mode): {impl: [(batch, ms), ...]}},
    served being 'task <t>' or 'mixed', mode 'eager' or 'compile'."""
    panels = {}
    for row in results:
        if row.get("median_ms") is None or "batch" not in row:
            continue
        impl = row["impl"]
        mode = "compile" if impl.endswith("+compile") else "eager"
        served = "mixed" if row["task"] == "mixed" else f"task {row['task']}"
        panels.setdefault((row["dtype"], row["pattern"], served, mode), {}).setdefault(
            impl.removesuffix("+compile"), []).append((row["batch"], row["median_ms"]))
    return panels


def plot_latency(results: list, path: str) -> None:
    """Latency vs batch size, one panel per (dtype, pattern, served tasks, eager/compiled),
    one line per implementation."""
    panels = latencies(results)
    if not panels:
        raise ValueError("no deployment-study rows to plot")
    impls = sorted({impl for lines in panels.values() for impl in lines})
    colors = {impl: f"C{i}" for i, impl in enumerate(impls)}
    rows, columns = math.ceil(len(panels) / COLUMNS), min(COLUMNS, len(panels))
    figure = Figure(figsize=(4.5 * columns, 3.5 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for ax, ((dtype, pattern, served, mode), lines) in zip(axes, sorted(panels.items())):
        for impl, points in sorted(lines.items()):
            points.sort()
            ax.plot([b for b, _ in points], [ms for _, ms in points], marker="o", color=colors[impl],
                    linestyle="--" if impl in ("naive", "cached") else "-", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{served}, {mode} ({dtype}, {pattern})", fontsize=9)
        ax.set_xlabel("batch size")
        ax.set_ylabel("median ms per batch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.savefig(path, dpi=120)
