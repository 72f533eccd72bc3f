"""One global optimizer step post-hook shared by every live PackNet.

Weight decay, momentum and Adam state move a weight even where its gradient is
exactly zero, so zero gradients alone cannot freeze a task.  After any
torch.optim optimizer steps, each live PackNet restores the tensors it protects
among that optimizer's parameters; parameters of other models are never touched.
The hook holds weak references only and removes itself when no PackNet is left.
"""
from __future__ import annotations

import itertools
import weakref

from torch.optim.optimizer import register_optimizer_step_post_hook

_watched: dict[int, weakref.ref] = {}
_keys = itertools.count()
_handle = None


def watch(obj) -> weakref.finalize:
    """Call `obj._after_step(param_ids)` after every optimizer step while `obj` lives.

    Returns a finalizer: calling it stops watching `obj` (it also runs when `obj` dies).
    """
    global _handle
    key = next(_keys)
    _watched[key] = weakref.ref(obj)
    if _handle is None:
        _handle = register_optimizer_step_post_hook(_after_step)
    return weakref.finalize(obj, _unwatch, key)


def installed() -> bool:
    """Whether the global hook is registered (it is exactly while some PackNet is watched)."""
    return _handle is not None


def _unwatch(key: int) -> None:
    global _handle
    _watched.pop(key, None)
    if not _watched and _handle is not None:
        _handle.remove()
        _handle = None


def _after_step(optimizer, args, kwargs) -> None:
    param_ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for ref in list(_watched.values()):
        obj = ref()
        if obj is not None:
            obj._after_step(param_ids)
