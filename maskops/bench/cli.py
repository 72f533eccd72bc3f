"""`maskops bench`: the op sweep, with --model the deployment study, with --overhead the
host cost of calls, layers and small models."""
from __future__ import annotations

import argparse
import sys

import torch

import maskops
from maskops.bench import cases as case_defs
from maskops.bench import overhead, report, study, sweep
from maskops.bench import models
from maskops.bench.timing import timer_for

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="maskops bench", description=__doc__)
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", nargs="+", choices=sorted(DTYPES),
                   help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--quick", action="store_true",
                   help="only each case's required settings; shorter timing")
    p.add_argument("--case", nargs="+", help="case names (default: all for the device)")
    p.add_argument("--impl", nargs="+", help="implementations to run (default: all)")
    p.add_argument("--pattern", nargs="+", choices=case_defs.PATTERNS)
    p.add_argument("--density", nargs="+", type=float, help="densities to sweep instead")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PATH", help="draw speedup vs density (PNG); with --model, "
                                                  "latency vs batch size")
    p.add_argument("--plot-vs", choices=("naive", "cached"), default="naive",
                   help="the plot's baseline: naive masking, or the dense op on a pre-masked copy")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--overhead", action="store_true",
                   help="per-call host cost of the ops and of converted small models (CPU, "
                        "1 thread unless --threads)")
    p.add_argument("--no-compile", action="store_true", help="--overhead: skip torch.compile")
    study_opts = p.add_argument_group("deployment study")
    study_opts.add_argument("--model", metavar="MODEL",
                            help=f"{', '.join(sorted(models.MODELS))}, torchvision:<name> or timm:<name>")
    study_opts.add_argument("--tasks", type=int, default=3)
    study_opts.add_argument("--ratio", nargs="+", type=float, default=[0.5, 0.75],
                            help="PackNet pruning ratio per task and layer")
    study_opts.add_argument("--batch", nargs="+", type=int, default=[1, 64])
    study_opts.add_argument("--resolution", type=int,
                            help="input height = width (default 224; 64 with --quick on cpu)")
    study_opts.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    study_opts.add_argument("--structure", choices=("weight", "block", "channel"), default="weight",
                            help="what PackNet prunes: single weights, blocks or output channels")
    study_opts.add_argument("--mixed", action="store_true",
                            help="batches whose samples cycle through the tasks, served at once "
                                 "(maskops) or by task groups (every impl, '-loop')")
    study_opts.add_argument("--each-task", action="store_true",
                            help="measure every task, not only the last (latency falls as a task sees less)")
    return p


def _cases(names):
    known = {case.name: case for case in case_defs.GPU_CASES + case_defs.CPU_CASES}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {sorted(known)}")
    return [known[name] for name in names]


def _warn_bad_rows(results) -> None:
    for row in results:
        if row.get("error"):
            print(f"warning: {row['case']} {row['impl']}: {row['error']}", file=sys.stderr)
        elif sweep.is_wrong(row):
            print(f"warning: {row['case']} {row['impl']} differs from cached: "
                  f"relative error {row['rel_err']:.2e}", file=sys.stderr)


def _overhead(args) -> int:
    torch.set_num_threads(args.threads or 1)
    header = {**report.environment("cpu"), "backends": maskops.available_backends(),
              "overhead": True}
    rows = overhead.run(overhead.side_by_side, compile_too=not args.no_compile)
    header["load_average_end"] = report.load_average()
    print(overhead.format_table(rows))
    if args.json:
        report.write_json(args.json, header, rows)
    return 0


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device here")
        # The cuDNN baselines get their autotuned algorithms, as a tuned deployment would.
        torch.backends.cudnn.benchmark = True
    if args.overhead:
        return _overhead(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [DTYPES[d] for d in args.dtype] if args.dtype else \
        [torch.bfloat16 if args.device == "cuda" else torch.float32]
    timer = timer_for(args.device, args.quick)
    header = {**report.environment(args.device), "backends": maskops.available_backends(),
              "quick": args.quick}
    if args.model:
        resolution = args.resolution or (64 if args.quick and args.device == "cpu" else 224)
        header.update(model=args.model, tasks=args.tasks, resolution=resolution,
                      structure=args.structure, mixed=args.mixed)
        results = []
        for dtype in dtypes:
            results += study.run(models.build(args.model), args.model.replace(":", "-"), tasks=args.tasks,
                                 ratios=args.ratio, batches=args.batch, resolution=resolution,
                                 device=args.device, dtype=dtype, timer=timer,
                                 compile_too=args.compile, impls=args.impl,
                                 show_progress=not args.no_progress, structure=args.structure,
                                 each_task=args.each_task, mixed=args.mixed)
    else:
        cases = _cases(args.case) if args.case else case_defs.cases_for(args.device)
        results = sweep.run(cases, dtypes, args.device, timer, quick=args.quick, impls=args.impl,
                            patterns=args.pattern, densities=args.density,
                            show_progress=not args.no_progress)
    header["load_average_end"] = report.load_average()
    print(report.format_table(results))
    _warn_bad_rows(results)
    if args.json:
        report.write_json(args.json, header, results)
    if args.plot:
        from maskops.bench.plot import plot, plot_latency
        try:
            if args.model:
                plot_latency(results, args.plot)
            else:
                plot(results, args.plot, args.plot_vs)
        except ValueError as error:  # e.g. no baseline was run: nothing to compare
            print(f"no plot written: {error}", file=sys.stderr)
    return 1 if any(row.get("error") for row in results) else 0
