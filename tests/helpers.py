"""Random problem builders shared by the op tests."""
from __future__ import annotations

import torch

import maskops
from maskops import backends

TOLERANCE = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float16: dict(rtol=2e-2, atol=2e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
}


def cpu_backends() -> list[str]:
    """Backends that run CPU tensors natively (the interpreter backend has its own tests)."""
    return [b for b in maskops.available_backends() if b in ("torch", "cpu")]


def op_backends() -> list[str]:
    """Every backend that runs float32 CPU tensors here (triton through its interpreter)."""
    return [b for b in maskops.available_backends()
            if backends.supports(b, torch.device("cpu"), torch.float32)]


def owner_map(shape, num_tasks=3, generator=None) -> torch.Tensor:
    return torch.randint(0, num_tasks + 1, shape, dtype=torch.uint8, generator=generator)


def grads(out, inputs, seed=1):
    """Gradients of <out, random> with respect to `inputs` (None where an input needs none)."""
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    got = iter(torch.autograd.grad(out, wanted, upstream.to(out.device)))
    return [next(got) if (t is not None and t.requires_grad) else None for t in inputs]


def assert_close_all(actual, expected, dtype):
    for a, e in zip(actual, expected):
        if e is None:
            assert a is None
        else:
            torch.testing.assert_close(a, e, **TOLERANCE[dtype])
