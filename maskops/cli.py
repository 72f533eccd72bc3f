"""`maskops` command line: `maskops demo [job|basic|packnet|dgm] ...`, `maskops bench ...`,
`maskops info`."""
from __future__ import annotations

import importlib
import sys

# Each entry point is a module with `main(argv) -> int` that parses its own options.
COMMANDS = {
    ("demo", "job"): "maskops.demos.job",
    ("demo", "basic"): "maskops.demos.basic",
    ("demo", "packnet"): "maskops.demos.packnet",
    ("demo", "dgm"): "maskops.demos.dgm",
    ("bench",): "maskops.bench.cli",
    ("info",): "maskops.info",
}

USAGE = """usage: maskops demo [job|basic|packnet|dgm] [options]   (default: job)
       maskops bench [options]
       maskops info
Run a command with --help for its options."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "demo" and (len(argv) == 1 or argv[1].startswith("-")):
        argv.insert(1, "job")
    for words, module in COMMANDS.items():
        if tuple(argv[:len(words)]) == words:
            return importlib.import_module(module).main(argv[len(words):]) or 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
