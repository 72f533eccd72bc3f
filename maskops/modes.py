"""The definitions of csrc/modes.h as Python values (read from maskops._C, not restated)."""
from __future__ import annotations

import enum

try:
    from maskops import _C
except ImportError as error:  # pragma: no cover - the package cannot work without it
    raise ImportError("maskops._C, the native extension, is not built: run `make build` "
                      "(or `python setup.py build_ext --inplace`)") from error

# Which weights take part in a product: the `mode` of the ops and kernels.
Mode = enum.IntEnum("Mode", dict(_C.modes))

MAX_TASK: int = _C.limits["max_task"]          # task ids are 1..MAX_TASK
TASK_IDS: int = _C.limits["task_ids"]          # entries of a per-task-id table
GPU_FEW_ROWS: int = _C.limits["gpu_few_rows"]  # GPU products stream the weight up to this many rows
