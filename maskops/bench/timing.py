"""Timers: `timer(fn) -> Timing`, the median time of one call of `fn`.

CPU: torch.utils.benchmark on all of torch's threads.  CUDA: every call that can be
captured is timed in a CUDA graph with an L2 flush before each call, the flush's own
time measured the same way and subtracted, so all implementations of a case are timed
the same way and host launch overhead (which dwarfs a ~20 us kernel) is left out.
Calls that synchronize with the host cannot be captured; they get triton's do_bench
(which flushes L2 before every call) and say so in `method`.
The sweep takes any callable of this shape, so tests can pass a fake one.
"""
from __future__ import annotations

import statistics
import warnings
from typing import Callable, NamedTuple

import torch

Fn = Callable[[], object]
GRAPH_CALLS_MS = 20  # calls per graph: about this much GPU time per replay
WARMUP_CALLS = 3


class Timing(NamedTuple):
    median_ms: float
    method: str


def cpu_timer(min_run_time: float = 1.0) -> Callable[[Fn], Timing]:
    from torch.utils import benchmark

    def time(fn: Fn) -> Timing:
        for _ in range(WARMUP_CALLS):  # page in buffers, let the allocator settle
            fn()
        measurement = benchmark.Timer("fn()", globals={"fn": fn},
                                      num_threads=torch.get_num_threads()
                                      ).blocked_autorange(min_run_time=min_run_time)
        return Timing(measurement.median * 1e3, "torch.utils.benchmark")
    return time


def cuda_timer(rep_ms: int = 100) -> Callable[[Fn], Timing]:
    from triton.testing import do_bench

    def time(fn: Fn) -> Timing:
        graph_ms = _graph_ms(fn, calls=_graph_calls(fn))
        if graph_ms is not None:
            return Timing(graph_ms, "cuda_graph")
        return Timing(do_bench(fn, rep=rep_ms, grad_to_none=None, return_mode="median"), "do_bench")
    return time


def timer_for(device: str, quick: bool) -> Callable[[Fn], Timing]:
    if device == "cuda":
        return cuda_timer(rep_ms=50 if quick else 100)
    return cpu_timer(min_run_time=0.5 if quick else 1.0)


def _graph_calls(fn: Fn) -> int:
    """Enough calls in one graph to take ~GRAPH_CALLS_MS, from one rough eager timing."""
    from triton.testing import do_bench
    ms = do_bench(fn, warmup=5, rep=20, grad_to_none=None, return_mode="median")
    return max(5, min(100, int(GRAPH_CALLS_MS / max(ms, 1e-3))))


def _capturable(fn: Fn) -> bool:
    """False if fn synchronizes with the host (a task-id check, a nonzero, ...)."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():  # "sync debug mode is a prototype feature"
        warnings.simplefilter("ignore", UserWarning)
        torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return True
    except RuntimeError:
        return False
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _replay_ms(body: Fn, calls: int, replays: int = 10) -> float:
    """Median time of one replay of a graph holding `calls` calls of body."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            body()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _graph_ms(fn: Fn, calls: int = 100):
    """Time of one call of fn with L2 flushed, from CUDA graphs; None if fn can't be captured."""
    if not _capturable(fn):
        return None
    # Writing twice the L2's size evicts whatever the previous call left there.
    flush = torch.empty(2 * torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size,
                        dtype=torch.int8, device="cuda")
    try:
        both = _replay_ms(lambda: (flush.zero_(), fn()), calls)
    except RuntimeError:
        torch.cuda.synchronize()
        return None
    ms = (both - _replay_ms(flush.zero_, calls)) / calls
    return ms if ms > 0 else None  # lost in the flush's noise: keep do_bench's figure
