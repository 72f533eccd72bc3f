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


def grads(out, inputs, seed=1, values_of=None):
    """Gradients of <out, random> with respect to `inputs` (None where an input needs none).
    `values_of`: a dtype the random values are rounded to first, so that an fp32 reference of a
    16-bit computation (upcast) gets the very values the 16-bit one got."""
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed),
                           dtype=values_of or out.dtype).to(out.dtype)
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    got = iter(torch.autograd.grad(out, wanted, upstream.to(out.device)))
    return [next(got) if (t is not None and t.requires_grad) else None for t in inputs]


def upcast(t):
    """A float32 leaf with the values of a low-precision tensor (None and integer tensors as they
    are): the reference computed on it rounds once at the end, as the kernels do, instead of after
    every 16-bit step, whose cancellations can exceed a 16-bit tolerance on their own."""
    if t is None or not t.is_floating_point():
        return t
    return t.detach().float().requires_grad_(t.requires_grad)


def assert_no_worse_than_reference(actual, reference_16bit, exact):
    """16-bit results against the fp32 reference of the same values (`exact`): each may be off
    by at most twice what the reference computed in the 16-bit type is off (16-bit sums that
    cancel lose more than any fixed tolerance), plus rounding at the output's scale."""
    for a, r, e in zip(actual, reference_16bit, exact):
        if e is None:
            assert a is None
            continue
        ours = (a.float() - e.float()).abs().max().item()
        theirs = (r.float() - e.float()).abs().max().item()
        bound = 2 * theirs + 1e-2 * (1 + e.abs().max().item())
        assert ours <= bound, f"error {ours:.4g} above {bound:.4g} (the 16-bit reference: {theirs:.4g})"


def assert_close_all(actual, expected, dtype):
    for a, e in zip(actual, expected):
        if e is None:
            assert a is None
        else:
            torch.testing.assert_close(a, e, **TOLERANCE[dtype])


def assert_first_task_kept(net, model, x, train_step) -> None:
    """PackNet over two tasks (task 1 trained, pruned, retrained; task 2 trained): task 1's
    output on x is finite and bit for bit the same after task 2."""
    net.begin_task()
    train_step()
    net.prune()
    train_step()
    net.end_task()
    net.set_task(1)
    with torch.no_grad():
        first = model(x)
    assert torch.isfinite(first).all()
    net.begin_task()
    train_step()
    net.end_task()
    net.set_task(1)
    with torch.no_grad():
        assert torch.equal(model(x), first)  # zero forgetting, bit for bit
