"""Launch logic shared by the Triton kernels: tile configs, autotuning by GPU time, and the
interpreter's rules (one config; bf16 computed in fp32)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from maskops.modes import GPU_FEW_ROWS

# Set to False to run the first (heuristic) config instead of timing the candidates.
AUTOTUNE = os.environ.get("MASKOPS_TRITON_AUTOTUNE", "1") != "0"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels run in: bf16 arithmetic is wrong in the interpreter, so fp32 there."""
    return torch.float32 if dtype == torch.bfloat16 and interpreting() else dtype


@dataclass(frozen=True)
class Config:
    bm: int
    bn: int
    bk: int
    split_k: int = 1       # GEMM: programs sharing one output tile's K range (partials summed after)
    swap_ab: bool = False  # GEMM: weight tile as the MMA's M side (small batches)
    warps: int = 4
    stages: int = 3
    # Instead of the fused kernel: write the masked weight to a temporary with a Triton
    # kernel, then run cuBLAS/cuDNN on it.  Wins when the op is compute-bound (large batch):
    # a mask applied in registers keeps Hopper's wgmma from running asynchronously.
    materialize: bool = False


MATERIALIZE = Config(0, 0, 0, materialize=True)


# The interpreter pays per tile iteration, not per element: few, large tiles.
INTERPRETER = Config(32, 32, 32, stages=1)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def gemm_configs(m: int, n: int, k: int, dtype: torch.dtype, device: torch.device,
                 grouped: bool = False) -> list[Config]:
    """Candidate configs for an (m, n, k) GEMM, the heuristic favourite first.  Per-row
    tasks (grouped) cannot materialize one weight, and their M-tiles hold one task each."""
    if interpreting():
        return [INTERPRETER]
    wide = dtype != torch.float32  # 2-byte types: twice the K per tile in the same shared memory
    if m <= GPU_FEW_ROWS or (grouped and m <= 1024):
        bm, bk = (16 if grouped else max(16, _pow2_at_least(m))), (128 if wide else 64)
        k_tiles = cdiv(k, bk)

        def split(bn: int, factor: float = 1.0) -> int:
            # Enough programs to fill the GPU twice over, each with at least 4 K-tiles.
            programs = cdiv(n, bn) * cdiv(m, bm)
            want = max(1, int(2 * _sms(device) * factor / programs))
            return min(1 << (want.bit_length() - 1), 16, max(1, k_tiles // 4))
        small_k = bk // 2  # K-tiles as small as a block-structured owner's blocks
        return [Config(bm, 32, bk, split(32), warps=4, stages=5),
                Config(bm, 64, bk, split(64), warps=4, stages=4),
                Config(bm, 64, 2 * bk, split(64), warps=4, stages=3),
                Config(bm, 64, bk, split(64), warps=8, stages=4),
                Config(bm, 64, small_k, split(64, 2), warps=4, stages=3),
                Config(bm, 64, small_k, split(64, 4), warps=4, stages=3),
                Config(bm, 32, bk, 1, warps=4, stages=4),
                Config(bm, 64, bk, split(64), swap_ab=True, warps=4, stages=4)]
    bk = 64 if wide else 32
    fused = [Config(128, 128, bk, warps=8, stages=3),
             Config(128, 128, bk, swap_ab=True, warps=8, stages=3),
             Config(128, 256, bk, warps=8, stages=3),
             Config(256, 128, bk, swap_ab=True, warps=8, stages=3),
             Config(128, 256, bk, swap_ab=True, warps=8, stages=3),
             Config(64, 128, bk, warps=4, stages=4)]
    if grouped:
        return fused
    return [MATERIALIZE] + fused if m > 256 else fused + [MATERIALIZE]


def wgrad_configs(m: int, dtype: torch.dtype, grouped: bool = False) -> list[Config]:
    """Candidate configs for a weight gradient reducing over m rows; bm is the reduction tile.
    The fused kernel skips tiles with nothing to train; MATERIALIZE (cuBLAS, then the mask)
    computes them all, faster when most tiles are trainable."""
    if interpreting():
        return [INTERPRETER]
    bm = min(64, max(16, _pow2_at_least(m)))
    wide = dtype != torch.float32
    fused = [Config(bm, 128, 128 if wide else 64, warps=8, stages=3),
             Config(bm, 64, 64, warps=4, stages=3),
             Config(bm, 128, 64, warps=4, stages=3),
             Config(min(bm, 32), 128, 128, warps=8, stages=4)]
    return fused if grouped else fused + [MATERIALIZE]


_tuned: dict = {}


def tune_key(name: str, rows: int, dtype: torch.dtype, vis, *shape) -> tuple:
    """What a tuned config is remembered by: the op, rows rounded up to a power of two,
    dtype, mask mode, per-row tasks or not, and the op's other sizes and flags."""
    return (name, _pow2_at_least(rows), dtype, vis.mode, vis.mixed) + shape


def gpu_time(fn: Callable[[], object]) -> float:
    """Median GPU milliseconds of fn with L2 flushed, launch overhead excluded: fn is captured
    in a CUDA graph (after an eager warm-up that compiles kernels and builds plans)."""
    from triton.testing import do_bench
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return do_bench(graph.replay, warmup=5, rep=25)


def choose(key, candidates: Sequence[Config], run: Callable[[Config], torch.Tensor],
           config: Config | None = None) -> torch.Tensor:
    """run(config): the given one, else the fastest candidate for `key` (timed once per key)."""
    if config is not None:
        return run(config)
    if key in _tuned:
        return run(_tuned[key])
    if not AUTOTUNE or len(candidates) == 1 or torch.cuda.is_current_stream_capturing():
        return run(candidates[0])
    from triton.runtime.errors import OutOfResources

    def timed(cfg: Config) -> float:
        try:
            return gpu_time(lambda: run(cfg))
        except (OutOfResources, RuntimeError):  # too big for this GPU, or not capturable
            return float("inf")
    _tuned[key] = min(candidates, key=timed)
    return run(_tuned[key])
