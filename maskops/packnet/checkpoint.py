"""PackNet checkpoint files: a versioned dict of tensors and plain values.

Readable with torch.load(weights_only=True); written to `<path>.tmp` and renamed over the
target, so a crash never leaves half a checkpoint.  A save killed before the rename leaves
`<path>.tmp`, which the next save of that path overwrites (saving one path from two processes
at once is not supported).  Reading checks every field, so a malformed file is reported, not
half loaded.
"""
from __future__ import annotations

import numbers
import os
import pickle
import zipfile

import torch

from maskops.modes import MAX_TASK

FORMAT = "maskops.packnet"
VERSION = 1
FIELDS = ("config", "num_tasks", "active", "task", "model", "tracked")
CONFIG = ("prune_ratio", "bias", "batchnorm")       # required
OPTIONAL_CONFIG = ("structure", "block")             # absent in files written before them


def write(path, payload: dict) -> None:
    path = os.fspath(path)
    # Same folder, so the rename is atomic; opened like any new file, so umask applies.
    temporary = f"{path}.tmp"
    try:
        with open(temporary, "wb") as file:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _fail(path, what: str):
    raise ValueError(f"{path!r} is not a valid maskops PackNet checkpoint: {what}")


def _task_id(path, payload: dict, key: str, high: int, optional: bool) -> None:
    value = payload[key]
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= high:
        _fail(path, f"{key} must be {'None or ' if optional else ''}a task id in 1..{high}, "
                    f"got {value!r}")


def read(path, map_location) -> dict:
    name = os.fspath(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (EOFError, OSError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise ValueError(f"{name!r} cannot be read as a checkpoint (truncated or not one): "
                         f"{error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{name!r} is not a maskops PackNet checkpoint")
    if payload.get("version") != VERSION:
        raise ValueError(f"{name!r} has PackNet checkpoint version "
                         f"{payload.get('version')!r}; this maskops reads version {VERSION}")
    missing = [key for key in FIELDS if key not in payload]
    if missing:
        _fail(name, f"missing {', '.join(missing)}")
    config = payload["config"]
    if not isinstance(config, dict) or not set(CONFIG) <= set(config) <= set(CONFIG + OPTIONAL_CONFIG):
        _fail(name, f"config must hold {', '.join(CONFIG)} (and may hold {', '.join(OPTIONAL_CONFIG)})")
    num_tasks = payload["num_tasks"]
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, numbers.Integral) \
            or not 0 <= num_tasks <= MAX_TASK:
        _fail(name, f"num_tasks must be an int in 0..{MAX_TASK}, got {num_tasks!r}")
    _task_id(name, payload, "active", num_tasks, optional=True)
    _task_id(name, payload, "task", num_tasks, optional=True)
    for key in ("model", "tracked"):
        if not isinstance(payload[key], dict):
            _fail(name, f"{key} must be a dict, got {type(payload[key]).__name__}")
    return payload
