"""The `torch` backend (maskops/backends/torch_backend.py): the reference semantics through
ATen on any device and dtype, with unselected weights replaced by zeros and mixed-task rows
grouped from the routing's host offsets."""
import torch

import maskops
from maskops import reference
from tests.helpers import owner_map


def test_runs_dtypes_the_native_kernels_do_not():
    x, w, owner = torch.randn(3, 8), torch.randn(4, 8), owner_map((4, 8))
    y = maskops.task_linear(x.bfloat16(), w.bfloat16(), owner, 2)  # automatic: torch on CPU bf16
    torch.testing.assert_close(y.float(), reference.task_linear(x.bfloat16().float(),
                                                                 w.bfloat16().float(), owner, 2),
                               rtol=2e-2, atol=2e-2)


def test_invisible_nan_never_reaches_the_output():
    x, w, owner = torch.randn(3, 8).half(), torch.randn(4, 8).half(), owner_map((4, 8))
    w[owner == 0] = float("nan")
    w[owner == 3] = float("inf")
    with maskops.use_backend("torch"):
        y = maskops.task_linear(x, w, owner, 2)
        gx, = torch.autograd.grad(maskops.task_linear(x.requires_grad_(), w, owner, 2).sum(), [x])
    assert torch.isfinite(y).all() and torch.isfinite(gx).all()


def test_mixed_tasks_read_nothing_on_the_host():
    x, w, owner = torch.randn(6, 8), torch.randn(4, 8), owner_map((4, 8))
    routing = maskops.route(torch.tensor([3, 1, 2, 2, 1, 3]))
    with maskops.use_backend("torch"), torch.profiler.profile() as prof:
        y = maskops.task_linear(x, w, owner, routing)
    assert not [e.name for e in prof.events() if e.name in ("aten::item", "aten::nonzero", "aten::unique")]
    torch.testing.assert_close(y, reference.task_linear(x, w, owner, routing.task.long()))
