"""The backend registry (maskops/backends/__init__.py) and the bridge the ops use to reach the
Python backends (maskops/backends/bridge.py)."""
import threading

import pytest
import torch

import maskops
from maskops import backends
from tests.helpers import owner_map


def test_claims():
    assert backends.available("torch") and backends.available("cpu")
    assert backends.supports("cpu", "cpu", torch.float64)
    assert backends.supports("cpu", "cpu", torch.float16)
    assert not backends.supports("cpu", "cpu", torch.complex64)
    assert not backends.supports("cpu", "cuda", torch.float32)
    assert backends.supports("torch", "cpu", torch.bfloat16)
    assert backends.available("cuda") == (bool(maskops._C.with_cuda) and torch.cuda.is_available())
    with pytest.raises(ValueError, match="unknown backend"):
        backends.available("tpu")


def test_use_backend_is_per_thread_and_nests():
    seen = {}
    with maskops.use_backend("torch"):
        assert backends.current() == backends.IDS["torch"]
        with maskops.use_backend("cpu"):
            assert backends.current() == backends.IDS["cpu"]
        assert backends.current() == backends.IDS["torch"]
        thread = threading.Thread(target=lambda: seen.update(other=backends.current()))
        thread.start()
        thread.join()
    assert seen["other"] == backends.AUTOMATIC and backends.current() == backends.AUTOMATIC


def test_the_chosen_backend_runs(monkeypatch):
    calls = []
    torch_backend = backends.python_backend("torch")
    monkeypatch.setattr(torch_backend, "linear_forward",
                        lambda *a, f=torch_backend.linear_forward: calls.append(1) or f(*a))
    x, w, owner = torch.randn(3, 5), torch.randn(4, 5), owner_map((4, 5))
    maskops.task_linear(x, w, owner, 1)  # automatic, float32 on the CPU: the cpu kernels
    assert calls == []
    with maskops.use_backend("torch"):
        maskops.task_linear(x, w, owner, 1)
    maskops.task_linear(x.half(), w.half(), owner, 1)  # automatic, float16 on the CPU: cpu
    assert calls == [1]


def test_an_explicit_backend_that_cannot_run_the_tensors_says_so():
    x, w, owner = torch.randn(3, 5).double(), torch.randn(4, 5).double(), owner_map((4, 5))
    if "triton" in maskops.available_backends():
        with maskops.use_backend("triton"), pytest.raises(RuntimeError, match="does not support"):
            maskops.task_linear(x, w, owner, 1)
