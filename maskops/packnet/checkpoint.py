"""PackNet checkpoint files: a versioned dict of tensors and plain values.

Readable with torch.load(weights_only=True); written to a temporary file in the
same folder and renamed over the target, so a crash never leaves half a file.
"""
from __future__ import annotations

import os
import uuid

import torch

FORMAT = "maskops.packnet"
VERSION = 1


def write(path, payload: dict) -> None:
    path = os.fspath(path)
    # Same folder, so the rename is atomic; opened like any new file, so umask applies.
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(temporary, "xb") as file:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def read(path, map_location) -> dict:
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a maskops PackNet checkpoint")
    if payload.get("version") != VERSION:
        raise ValueError(f"{os.fspath(path)!r} has PackNet checkpoint version "
                         f"{payload.get('version')!r}; this maskops reads version {VERSION}")
    return payload
