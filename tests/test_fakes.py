"""The op registrations (schemas in python/ops.cpp, fake kernels in maskops/fakes.py): every op
passes torch.library.opcheck on every backend, and the fake kernels check their arguments."""
import pytest
import torch

import maskops
from maskops import backends
from maskops.modes import Mode
from tests.helpers import op_backends, owner_map

ops = torch.ops.maskops


def _samples(backend: str):
    g = torch.Generator().manual_seed(5)
    b = backends.IDS[backend]
    x = torch.randn(3, 5, generator=g, requires_grad=True)
    x3 = torch.randn(2, 3, 5, generator=g, requires_grad=True)
    w = torch.randn(4, 5, generator=g, requires_grad=True)
    owner = owner_map(w.shape, generator=g)
    bias = torch.randn(4, generator=g, requires_grad=True)
    xc = torch.randn(2, 4, 6, 6, generator=g, requires_grad=True)
    wc = torch.randn(4, 2, 3, 3, generator=g, requires_grad=True)
    oc = owner_map(wc.shape, generator=g)
    # Conv weights, owners and masks as model.to(memory_format=torch.channels_last) leaves them.
    cl = torch.channels_last
    wc_cl = wc.detach().contiguous(memory_format=cl).requires_grad_()
    oc_cl = oc.contiguous(memory_format=cl)
    soft_cl = torch.rand(wc.shape, generator=g).contiguous(memory_format=cl).requires_grad_()
    geometry = ([1, 1], [1, 1], [1, 1], 2)
    rows = tuple(maskops.route(torch.tensor([1, 3, 2])))
    images = tuple(maskops.route(torch.tensor([2, 1])))
    grad, gradc = torch.randn(3, 4, generator=g), torch.randn(2, 4, 6, 6, generator=g)
    w0, x0, wc0, xc0 = w.detach(), x.detach(), wc.detach(), xc.detach()
    out_mask = torch.rand(3, 4, generator=g, requires_grad=True)
    soft = torch.rand(4, 5, generator=g, requires_grad=True)
    none = (None, None, None)
    return [
        (ops.task_linear.default, (x, w, owner, 2, *none, bias, None, b)),
        (ops.task_linear.default, (x, w, owner, 0, *rows, bias, out_mask, b)),
        (ops.task_linear.default, (x3, w, owner, 0, *maskops.route(torch.tensor([3, 1])), None,
                                   torch.rand(2, 4), b)),
        (ops.masked_linear.default, (x, w, soft, owner > 1, bias, None, b)),
        (ops.task_conv2d.default, (xc, wc, oc, 3, *none, None, torch.rand(4), *geometry, b)),
        (ops.task_conv2d.default, (xc.contiguous(memory_format=torch.channels_last), wc, oc, 0,
                                   *images, bias, None, *geometry, b)),
        (ops.task_conv2d.default, (xc.contiguous(memory_format=cl), wc_cl, oc_cl, 2, *none, bias,
                                   None, *geometry, b)),
        (ops.masked_conv2d.default, (xc, wc, oc > 1, None, bias, None, *geometry, b)),
        (ops.masked_conv2d.default, (xc, wc_cl, soft_cl, oc_cl > 1, None, None, *geometry, b)),
        (ops.linear_grad_input.default, (grad, w0, int(Mode.visible), owner, None, 0, *rows, b)),
        (ops.linear_grad_weight.default, (grad, x0, int(Mode.trainable), owner, None, 2, *none, b)),
        (ops.linear_grad_weight.default, (grad, x0, int(Mode.trainable), owner, None, 0, *rows, b)),
        (ops.conv2d_grad_input.default, (gradc, wc0, int(Mode.visible), oc, None, 0, *images,
                                         [2, 4, 6, 6], *geometry, b)),
        (ops.conv2d_grad_weight.default, (gradc, xc0, int(Mode.mask), None, oc > 0, 1, *none,
                                          list(wc.shape), *geometry, b)),
        (ops.conv2d_grad_weight.default, (gradc, xc0, int(Mode.trainable), oc_cl, None, 2, *none,
                                          list(wc.shape), *geometry, b)),
        (ops.conv2d_grad_weight.default, (gradc, xc0, int(Mode.dense), None, None, 1, *none,
                                          list(wc.shape), *geometry, b)),
    ]


CASES = len(_samples("torch"))


@pytest.mark.parametrize("backend", op_backends())
@pytest.mark.parametrize("case", range(CASES))
def test_opcheck(backend, case):
    op, args = _samples(backend)[case]
    torch.library.opcheck(op, args)


def test_opcheck_pack_visible():
    torch.library.opcheck(ops.pack_visible.default, (owner_map((5, 70)), 2))


def test_fake_kernels_check_their_arguments():
    """A fake kernel runs the real kernel's checks (a tensor on the meta device makes the
    dispatcher pick the fake kernel)."""
    x, w = torch.randn(3, 5), torch.randn(4, 5)
    meta = torch.ones(4, 5, dtype=torch.bool, device="meta")
    with pytest.raises(RuntimeError, match="trainable is on meta but x is on cpu"):
        maskops.masked_linear(x, w, w > 0, trainable=meta)
    xc, wc = torch.randn(2, 4, 6, 6), torch.randn(6, 4, 3, 3)
    with pytest.raises(RuntimeError, match="trainable is on meta"):
        maskops.masked_conv2d(xc, wc, wc > 0, trainable=torch.ones(6, 4, 3, 3, device="meta").bool())
    with pytest.raises(ValueError, match="bias must have shape"):
        maskops.task_linear(x.to("meta"), w.to("meta"), owner_map(w.shape).to("meta"), 1,
                            torch.randn(5, device="meta"))


def test_fake_kernels_under_dynamic_shapes():
    """Symbolic batch sizes reach the checks as SymInts."""
    w, owner = torch.randn(4, 5), owner_map((4, 5))

    def f(x):
        return maskops.task_linear(x, w, owner, 2).relu()

    compiled = torch.compile(f, dynamic=True, fullgraph=True, backend="aot_eager")
    for rows in (3, 7):
        x = torch.randn(rows, 5)
        torch.testing.assert_close(compiled(x), f(x))
