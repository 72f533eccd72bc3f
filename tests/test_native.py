"""The native CPU backend (maskops._C) against maskops.reference.

Sizes reach the paths the small op tests do not: the fused few-row kernels and the
panel + BLAS path, ragged blocks, tiles without trainable weights, the AVX2 and the
portable kernels.  Also the native ops' registrations (opcheck, fake kernels, load order).
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

_C = pytest.importorskip("maskops._C", reason="maskops._C is not built: "
                         "run `python setup.py build_ext --inplace` (make build)")

import maskops  # noqa: E402
from maskops import info, reference  # noqa: E402
from maskops.backends import native  # noqa: E402
from tests.helpers import assert_close_all, grads, owner_map  # noqa: E402

DTYPES = [torch.float32, torch.float64]
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=[True, False], ids=["avx2", "portable"])
def simd(request):
    """Run with the AVX2 kernels (where the CPU has them) and with the portable ones."""
    before = _C.avx2_enabled()
    _C.set_avx2_enabled(request.param)
    yield request.param
    _C.set_avx2_enabled(before)


def _leaf(t, dtype):
    return t.to(dtype).detach().requires_grad_()


def _selected(owner, task):
    """Where the weight gradient may be nonzero: owner == task (any of the tasks)."""
    if isinstance(task, torch.Tensor):
        return torch.isin(owner, task.to(torch.uint8))
    return owner == task


# ----------------------------------------------------------------------------- linear


@st.composite
def linear_problems(draw):
    # Row counts on both sides of the fused/BLAS switch; K not a multiple of any block.
    # per_sample: per-sample tasks (task ops) or a `trainable` mask (masked ops).
    rows = draw(st.sampled_from([1, 2, 3, 4, 5, 9, 16, 17, 40]))
    return dict(rows=rows, n=draw(st.integers(1, 150)), k=draw(st.integers(1, 300)),
                kind=draw(st.sampled_from(["task", "uint8", "bool", "soft"])),
                per_sample=draw(st.booleans()), bias=draw(st.booleans()),
                out_mask=draw(st.sampled_from([None, "channel", "sample"])),
                task=draw(st.integers(1, 3)), strided_x=draw(st.booleans()),
                seed=draw(st.integers(0, 2**16)))


def _run_linear(p, dtype):
    """[y, grads...] from the cpu backend and from the reference, and (owner, task)."""
    g = torch.Generator().manual_seed(p["seed"])
    x = torch.randn(p["rows"], p["k"], generator=g)
    if p["strided_x"]:  # every other column of a wider tensor
        x = torch.randn(p["rows"], 2 * p["k"], generator=g)[:, ::2]
    x, w = _leaf(x, dtype), _leaf(torch.randn(p["n"], p["k"], generator=g), dtype)
    b = _leaf(torch.randn(p["n"], generator=g), dtype) if p["bias"] else None
    om = {None: None, "channel": (torch.rand(p["n"], generator=g) > 0.3).to(dtype),
          "sample": _leaf(torch.rand(p["rows"], p["n"], generator=g), dtype)}[p["out_mask"]]
    inputs = [x, w, b, om]
    if p["kind"] == "task":
        owner = owner_map(w.shape, generator=g)
        task = torch.randint(1, 4, (p["rows"],), generator=g) if p["per_sample"] else p["task"]

        def op(module):
            return module.task_linear(x, w, owner, task, b, out_mask=om)
    else:
        mask = torch.rand(w.shape, generator=g)
        binary = (mask > 0.4).to(getattr(torch, p["kind"])) if p["kind"] != "soft" else None
        mask = _leaf(mask, dtype) if binary is None else binary
        trainable = torch.rand(w.shape, generator=g) > 0.5 if p["per_sample"] else None
        inputs.append(mask if mask.requires_grad else None)

        def op(module):
            return module.masked_linear(x, w, mask, b, out_mask=om, trainable=trainable)
    with maskops.use_backend("cpu"):
        y = op(maskops)
        got = [y] + grads(y, inputs)
    expected = op(reference)
    return got, [expected] + grads(expected, inputs), (owner, task) if p["kind"] == "task" else None


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(p=linear_problems())
def test_linear_matches_reference(simd, dtype, p):
    got, expected, task_spec = _run_linear(p, dtype)
    assert_close_all(got, expected, dtype)
    if task_spec is not None:  # frozen and free weights: exactly zero, not small
        owner, task = task_spec
        assert torch.all(got[2][~_selected(owner, task)] == 0)


def test_linear_skips_blocks_without_selected_weights(simd):
    """Weight rows a task cannot see give exact zeros; blocks nobody trains stay zero."""
    g = torch.Generator().manual_seed(5)
    n, k = 150, 300
    owner = owner_map((n, k), generator=g)
    owner[:70] = 3  # invisible to task 2, and frozen for it
    owner[:, 260:] = 0
    x = torch.randn(40, k, generator=g, requires_grad=True)
    w = torch.randn(n, k, generator=g, requires_grad=True)
    for rows in (3, 40):  # fused and BLAS paths
        with maskops.use_backend("cpu"):
            y = maskops.task_linear(x[:rows], w, owner, 2)
            gx, gw = torch.autograd.grad(y.sum(), [x, w])
        expected = reference.task_linear(x[:rows], w, owner, 2)
        ex, ew = torch.autograd.grad(expected.sum(), [x, w])
        torch.testing.assert_close(y, expected)
        torch.testing.assert_close(gx, ex)
        torch.testing.assert_close(gw, ew)
        assert torch.all(y[:, :70] == 0) and torch.all(gw[owner != 2] == 0)


def test_linear_mixed_tasks_in_one_batch(simd):
    """Rows of many tasks in one call equal one call per task."""
    g = torch.Generator().manual_seed(7)
    owner = owner_map((64, 96), num_tasks=6, generator=g)
    w = torch.randn(64, 96, generator=g, requires_grad=True)
    x = torch.randn(30, 96, generator=g)
    tasks = torch.randint(1, 7, (30,), generator=g)
    with maskops.use_backend("cpu"):
        y = maskops.task_linear(x, w, owner, tasks)
        (gw,) = torch.autograd.grad(y.sum(), [w])
        for t in tasks.unique().tolist():
            rows = tasks == t
            torch.testing.assert_close(y[rows], maskops.task_linear(x[rows], w, owner, t))
    expected = reference.task_linear(x, w, owner, tasks)
    (ew,) = torch.autograd.grad(expected.sum(), [w])
    torch.testing.assert_close(gw, ew)


# ----------------------------------------------------------------------------- conv


@st.composite
def conv_problems(draw):
    groups = draw(st.sampled_from([1, 2, 4]))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    hw = tuple(draw(st.integers(dilation[a] * (kernel[a] - 1) + 1, 10)) for a in (0, 1))
    batch = draw(st.integers(1, 5))
    return dict(groups=groups, cin=groups * draw(st.integers(1, 3)),
                cout=groups * draw(st.integers(1, 4)), kernel=kernel, hw=hw, batch=batch,
                stride=(draw(st.integers(1, 3)), draw(st.integers(1, 2))), dilation=dilation,
                padding=(draw(st.integers(0, 2)), draw(st.integers(0, 1))),
                layout=draw(st.sampled_from(["contiguous", "channels_last", "strided"])),
                kind=draw(st.sampled_from(["task", "uint8", "soft"])),
                per_sample=draw(st.booleans()), bias=draw(st.booleans()),
                out_mask=draw(st.sampled_from([None, "channel", "sample"])),
                task=draw(st.integers(1, 3)), seed=draw(st.integers(0, 2**16)))


def _conv_input(p, dtype, g):
    shape = (p["batch"], p["cin"], *p["hw"])
    if p["layout"] == "strided":  # every other image of a larger batch
        x = torch.randn(2 * shape[0], *shape[1:], generator=g)[::2]
    else:
        x = torch.randn(shape, generator=g)
        if p["layout"] == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    return x.to(dtype).requires_grad_()


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(p=conv_problems())
def test_conv2d_matches_reference(dtype, p):
    g = torch.Generator().manual_seed(p["seed"])
    x = _conv_input(p, dtype, g)
    w = _leaf(torch.randn(p["cout"], p["cin"] // p["groups"], *p["kernel"], generator=g), dtype)
    b = _leaf(torch.randn(p["cout"], generator=g), dtype) if p["bias"] else None
    om = {None: None, "channel": (torch.rand(p["cout"], generator=g) > 0.3).to(dtype),
          "sample": _leaf(torch.rand(p["batch"], p["cout"], generator=g), dtype)}[p["out_mask"]]
    geometry = (p["stride"], p["padding"], p["dilation"], p["groups"])
    inputs = [x, w, b, om]
    if p["kind"] == "task":
        owner = owner_map(w.shape, generator=g)
        task = torch.randint(1, 4, (p["batch"],), generator=g) if p["per_sample"] else p["task"]

        def op(module):
            return module.task_conv2d(x, w, owner, task, b, *geometry, out_mask=om)
    else:
        mask = torch.rand(w.shape, generator=g)
        mask = _leaf(mask, dtype) if p["kind"] == "soft" else (mask > 0.5).to(torch.uint8)
        inputs.append(mask if mask.requires_grad else None)

        def op(module):
            return module.masked_conv2d(x, w, mask, b, *geometry, out_mask=om)
    with maskops.use_backend("cpu"):
        y = op(maskops)
        got = [y] + grads(y, inputs)
    expected = op(reference)
    assert_close_all(got, [expected] + grads(expected, inputs), dtype)
    if p["layout"] == "channels_last" and not x.is_contiguous():
        assert y.is_contiguous(memory_format=torch.channels_last)
    if p["kind"] == "task":
        assert torch.all(got[2][~_selected(owner, task)] == 0)


def test_conv2d_frozen_layer_gets_zero_weight_grad():
    """A task that owns nothing in a layer: no weight gradient is computed, all zeros."""
    x = torch.randn(3, 4, 6, 6)
    w = torch.randn(5, 4, 3, 3, requires_grad=True)
    owner = torch.randint(1, 3, w.shape, dtype=torch.uint8)
    with maskops.use_backend("cpu"):
        (gw,) = torch.autograd.grad(maskops.task_conv2d(x, w, owner, 3, padding=1).sum(), [w])
    assert torch.all(gw == 0)


# ----------------------------------------------------------------------------- native ops


def _linear_args(mode, rows=5, n=7, k=19, dtype=torch.float64, per_row=False):
    g = torch.Generator().manual_seed(mode)
    x = torch.randn(rows, k, generator=g, dtype=dtype)
    w = torch.randn(n, k, generator=g, dtype=dtype)
    owner = owner_map((n, k), generator=g) if mode in (1, 2) else None
    mask = (torch.rand(n, k, generator=g) > 0.5).to(torch.uint8) if mode == 3 else None
    row_task = torch.randint(1, 4, (rows,), generator=g, dtype=torch.int32) if per_row else None
    return x, w, owner, mask, row_task


def _conv_args(mode, per_image=False):
    g = torch.Generator().manual_seed(mode)
    x = torch.randn(3, 4, 7, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    owner = owner_map(w.shape, generator=g) if mode in (1, 2) else None
    mask = torch.rand(w.shape, generator=g, dtype=torch.float64) if mode == 3 else None
    row_task = torch.tensor([2, 1, 3], dtype=torch.int32) if per_image else None
    return x, w, owner, mask, row_task


def _native_op_samples():
    ops = torch.ops.maskops
    geometry = ([2, 1], [1, 0], [1, 2], 2)
    for mode, per_row in ((0, False), (1, True), (2, False), (2, True), (3, False)):
        x, w, owner, mask, row_task = _linear_args(mode, per_row=per_row)
        grad = torch.randn(x.shape[0], w.shape[0], dtype=x.dtype)
        sel = (mode, owner, mask, 2, row_task)
        yield ops.native_linear_forward, (x, w, *sel, torch.randn(w.shape[0], dtype=x.dtype),
                                          torch.rand(x.shape[0], w.shape[0], dtype=x.dtype))
        yield ops.native_linear_grad_input, (grad, w, *sel)
        yield ops.native_linear_grad_weight, (grad, x, *sel)
        xc, wc, oc, mc, tc = _conv_args(mode, per_image=per_row)
        selc = (mode, oc, mc, 2, tc)
        yc = torch.ops.maskops.native_conv2d_forward(xc, wc, *selc, None, None, *geometry)
        yield ops.native_conv2d_forward, (xc, wc, *selc, torch.randn(6, dtype=xc.dtype),
                                          torch.rand(6, dtype=xc.dtype), *geometry)
        yield ops.native_conv2d_grad_input, (torch.randn_like(yc), wc, *selc, list(xc.shape),
                                             *geometry)
        yield ops.native_conv2d_grad_weight, (torch.randn_like(yc), xc, *selc, list(wc.shape),
                                              *geometry)


def test_native_ops_pass_opcheck():
    for op, args in _native_op_samples():
        torch.library.opcheck(op, args)


def test_native_ops_channels_last_fake_matches_real():
    x, w, owner, _, _ = _conv_args(1)
    x = x.contiguous(memory_format=torch.channels_last)
    args = (x, w, 1, owner, None, 2, None, None, None, [1, 1], [1, 1], [1, 1], 2)
    torch.library.opcheck(torch.ops.maskops.native_conv2d_forward, args)
    assert torch.ops.maskops.native_conv2d_forward(*args).is_contiguous(
        memory_format=torch.channels_last)


def test_native_ops_handle_empty_batches():
    ops = torch.ops.maskops
    x, w, owner, _, _ = _linear_args(2, rows=0)
    row_task = torch.zeros(0, dtype=torch.int32)
    assert ops.native_linear_forward(x, w, 1, owner, None, 2, row_task, None, None).shape == (0, 7)
    grad = torch.zeros(0, 7, dtype=x.dtype)
    assert ops.native_linear_grad_input(grad, w, 1, owner, None, 2, None).shape == (0, 19)
    gw = ops.native_linear_grad_weight(grad, x, 2, owner, None, 2, row_task)
    assert gw.shape == (7, 19) and torch.all(gw == 0)
    xc, wc, oc, _, _ = _conv_args(1)
    geometry = ([1, 1], [1, 1], [1, 1], 2)
    y = ops.native_conv2d_forward(xc[:0], wc, 1, oc, None, 2, None, None, None, *geometry)
    assert y.shape == (0, 6, 7, 6)


def test_native_ops_reject_bad_arguments():
    ops = torch.ops.maskops
    x, w, owner, _, _ = _linear_args(1)
    with pytest.raises(RuntimeError, match="mode must be 0..3"):
        ops.native_linear_forward(x, w, 7, owner, None, 2, None, None, None)
    with pytest.raises(RuntimeError, match="owner is required"):
        ops.native_linear_forward(x, w, 1, None, None, 2, None, None, None)
    with pytest.raises(RuntimeError, match="owner must be uint8"):
        ops.native_linear_forward(x, w, 1, owner.float(), None, 2, None, None, None)
    with pytest.raises(RuntimeError, match="task must be in 1..255"):
        ops.native_linear_forward(x, w, 1, owner, None, 0, None, None, None)
    with pytest.raises(ValueError, match="outside 1..255"):
        ops.native_linear_forward(x, w, 1, owner, None, 1, torch.full((5,), 300, dtype=torch.int32),
                                  None, None)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.native_linear_forward(x.half(), w.half(), 1, owner, None, 2, None, None, None)


def test_gradcheck_through_native_ops():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(18, 5, dtype=torch.float64, generator=g, requires_grad=True)  # BLAS path
    w = torch.randn(4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    owner = (torch.randint(0, 2, w.shape, generator=g) * 2).to(torch.uint8)  # visible == trainable
    soft = torch.rand(w.shape, dtype=torch.float64, generator=g, requires_grad=True)
    xc = torch.randn(2, 4, 5, 5, dtype=torch.float64, generator=g, requires_grad=True)
    wc = torch.randn(6, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    oc = (torch.randint(0, 2, wc.shape, generator=g) * 2).to(torch.uint8)
    def gradcheck(fn, inputs):
        return torch.autograd.gradcheck(fn, inputs, fast_mode=True)

    with maskops.use_backend("cpu"):
        assert gradcheck(lambda x, w: maskops.task_linear(x, w, owner, 2), (x, w))
        assert gradcheck(lambda x, w: maskops.task_linear(x[:3], w, owner, 2), (x, w))  # fused
        assert gradcheck(lambda x, w, m: maskops.masked_linear(x, w, m), (x, w, soft))
        assert gradcheck(
            lambda x, w: maskops.task_conv2d(x, w, oc, torch.tensor([2, 2]), None, 2, 1, 1, 2),
            (xc, wc))


def test_schemas_load_in_either_order():
    """The C++ schemas and the Python custom ops share the namespace, whichever loads first."""
    so = _C.__file__
    checks = "assert torch.ops.maskops.native_linear_forward is not None; " \
             "assert torch.ops.maskops.task_linear is not None"
    first_cpp = f"import torch; torch.ops.load_library({so!r}); " \
                f"import maskops.backends.native; {checks}"
    first_python = f"import torch, maskops.ops, maskops.backends.native; {checks}"
    for code in (first_cpp, first_python):
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_backend_objects():
    cpu = native.backend("cpu")
    assert cpu.available() and "cpu" in maskops.available_backends()
    assert cpu.supports(torch.device("cpu"), torch.float64)
    assert not cpu.supports(torch.device("cpu"), torch.float16)
    cuda = native.backend("cuda")
    assert cuda.available() == (bool(_C.with_cuda) and torch.cuda.is_available())
    with pytest.raises(ValueError, match="no native backend"):
        native.backend("tpu")


def test_info_reports_the_build(capsys):
    assert info.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("available backends:") and "cpu" in line for line in lines)
    assert info.main(["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["extension"]["built"] and report["extension"]["cuda"] == bool(_C.with_cuda)
