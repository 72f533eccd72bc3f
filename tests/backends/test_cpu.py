"""The `cpu` backend (csrc/cpu through python/cpu_ops.cpp) against maskops.reference.

Sizes reach the paths the small op tests do not: the fused few-row kernels and the
panel + BLAS path, ragged blocks, tiles without trainable weights, the AVX2 and the
portable kernels.  Also its backward ops in every mode, its argument checks, and that it
runs with no Python at all.
"""
import math
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import maskops
from maskops import _C, backends, reference
from maskops.modes import Mode
from tests.helpers import (assert_close_all, assert_no_worse_than_reference, grads, owner_map,
                           upcast)

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(params=maskops.isa.NAMES)
def simd(request):
    """Run with each instruction set's loops (skipped where this CPU lacks one)."""
    if request.param not in maskops.isa.supported():
        pytest.skip(f"this CPU does not run {request.param}")
    before = maskops.isa.active()
    maskops.isa.use(request.param)
    yield request.param
    maskops.isa.use(before)


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


def _check_against_reference(op, args, dtype):
    """Runs op(module, *args) (args: x, w, bias, out_mask, mask or None) with the cpu backend
    and with the reference; compares outputs and gradients and returns the cpu backend's.
    16-bit types: against the fp32 reference of the same values, at most twice as far off as
    the reference computed in the 16-bit type."""
    with maskops.use_backend("cpu"):
        y = op(maskops, *args)
        got = [y] + grads(y, args)
    y = op(reference, *args)
    expected = [y] + grads(y, args)
    if dtype.itemsize == 2:
        exact_args = [upcast(a) for a in args]
        y = op(reference, *exact_args)
        assert_no_worse_than_reference(got, expected, [y] + grads(y, exact_args, values_of=dtype))
    else:
        assert_close_all(got, expected, dtype)
    return got


def _run_linear(p, dtype):
    """[y, grads...] from the cpu backend, checked against the reference, and (owner, task)."""
    g = torch.Generator().manual_seed(p["seed"])
    x = torch.randn(p["rows"], p["k"], generator=g)
    if p["strided_x"]:  # every other column of a wider tensor
        x = torch.randn(p["rows"], 2 * p["k"], generator=g)[:, ::2]
    x, w = _leaf(x, dtype), _leaf(torch.randn(p["n"], p["k"], generator=g), dtype)
    b = _leaf(torch.randn(p["n"], generator=g), dtype) if p["bias"] else None
    om = {None: None, "channel": (torch.rand(p["n"], generator=g) > 0.3).to(dtype),
          "sample": _leaf(torch.rand(p["rows"], p["n"], generator=g), dtype)}[p["out_mask"]]
    mask = None
    if p["kind"] == "task":
        owner = owner_map(w.shape, generator=g)
        task = torch.randint(1, 4, (p["rows"],), generator=g) if p["per_sample"] else p["task"]

        def op(module, x, w, b, om, mask):
            return module.task_linear(x, w, owner, task, b, out_mask=om)
    else:
        mask = torch.rand(w.shape, generator=g)
        binary = (mask > 0.4).to(getattr(torch, p["kind"])) if p["kind"] != "soft" else None
        mask = _leaf(mask, dtype) if binary is None else binary
        trainable = torch.rand(w.shape, generator=g) > 0.5 if p["per_sample"] else None

        def op(module, x, w, b, om, mask):
            return module.masked_linear(x, w, mask, b, out_mask=om, trainable=trainable)
    got = _check_against_reference(op, [x, w, b, om, mask], dtype)
    return got, (owner, task) if p["kind"] == "task" else None


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(p=linear_problems())
def test_linear_matches_reference(simd, dtype, p):
    got, task_spec = _run_linear(p, dtype)
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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [32, 96, 544])
def test_linear_reads_task_bit_maps_and_rebuilds_them(simd, dtype, k):
    """Single-task calls on rows of whole 32-bit words read the task's cached 1-bit map:
    every task and row count agree with the reference, and after the owner changes in place
    the map is rebuilt."""
    g = torch.Generator().manual_seed(k)
    owner = owner_map((70, k), num_tasks=4, generator=g)
    w = _leaf(torch.randn(70, k, generator=g), dtype)
    x = _leaf(torch.randn(20, k, generator=g), dtype)
    for step in range(2):
        for task in (1, 3, 4):
            for rows in (1, 5, 20):  # fused kernels and masked panels
                with maskops.use_backend("cpu"):
                    y = maskops.task_linear(x[:rows], w, owner, task)
                    got = (y, *torch.autograd.grad(y.sum(), [x, w]))
                expected = reference.task_linear(x[:rows], w, owner, task)
                assert_close_all(got, (expected, *torch.autograd.grad(expected.sum(), [x, w])),
                                 dtype)
        owner[:, : k // 2] = owner[:, : k // 2].flip(0)  # a new version of the same owner


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("task", [2, "mixed"])
def test_16bit_products_of_large_weights_run_in_panels(dtype, task):
    """More rows than the fused kernels take and a weight larger than one product panel (8 MB):
    2100 rows of 2048 run as a panel of 2048 rows and a ragged one of 52, each masked in turn."""
    g = torch.Generator().manual_seed(11)
    w = torch.randn(2100, 2048, generator=g).to(dtype)
    owner = owner_map(w.shape, generator=g)
    x, b = torch.randn(60, 2048, generator=g).to(dtype), torch.randn(2100, generator=g).to(dtype)
    tasks = torch.randint(1, 4, (60,), generator=g) if task == "mixed" else task  # groups of > 16
    with maskops.use_backend("cpu"):
        y = maskops.task_linear(x, w, owner, tasks, b)
    exact = reference.task_linear(x.float(), w.float(), owner, tasks, b.float())
    assert_no_worse_than_reference([y], [reference.task_linear(x, w, owner, tasks, b)], [exact])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op_name", ["linear", "conv"])
def test_samples_sorted_by_task_run_in_place(op_name, dtype):
    """A batch already sorted by task (as serving.Runner sends it) is not regrouped: each
    task's run of samples is used in place, forward and backward."""
    g = torch.Generator().manual_seed(11)
    tasks = torch.tensor([1] * 20 + [2] * 3 + [3] * 18)  # groups of fused and of gemm sizes
    if op_name == "linear":
        x, w = torch.randn(len(tasks), 40, generator=g), torch.randn(24, 40, generator=g)
    else:
        x, w = torch.randn(len(tasks), 4, 5, 5, generator=g), torch.randn(6, 4, 3, 3, generator=g)
    x, w, b = _leaf(x, dtype), _leaf(w, dtype), _leaf(torch.randn(w.shape[0], generator=g), dtype)
    owner = owner_map(w.shape, generator=g)

    def op(module, x, w, b, om, mask):
        if op_name == "linear":
            return module.task_linear(x, w, owner, tasks, b)
        return module.task_conv2d(x, w, owner, tasks, b, padding=1)
    _check_against_reference(op, [x, w, b, None, None], dtype)


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
                weight_layout=draw(st.sampled_from(WEIGHT_LAYOUTS)),
                kind=draw(st.sampled_from(["task", "uint8", "soft"])),
                per_sample=draw(st.booleans()), bias=draw(st.booleans()),
                out_mask=draw(st.sampled_from([None, "channel", "sample"])),
                task=draw(st.integers(1, 3)), seed=draw(st.integers(0, 2**16)))


# (weight, owner or mask) memory formats: as model.to(memory_format=...) leaves them, or not.
WEIGHT_LAYOUTS = ["contiguous", "channels_last", "channels_last weight", "channels_last owner"]


def _in_layout(t, layout, part):
    """`t` (the weight or its owner/mask: `part`) in the memory format `layout` gives it."""
    if layout == "channels_last" or layout == f"channels_last {part}":
        return t.contiguous(memory_format=torch.channels_last)
    return t


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
    w = torch.randn(p["cout"], p["cin"] // p["groups"], *p["kernel"], generator=g)
    w = _leaf(_in_layout(w, p["weight_layout"], "weight"), dtype)
    b = _leaf(torch.randn(p["cout"], generator=g), dtype) if p["bias"] else None
    om = {None: None, "channel": (torch.rand(p["cout"], generator=g) > 0.3).to(dtype),
          "sample": _leaf(torch.rand(p["batch"], p["cout"], generator=g), dtype)}[p["out_mask"]]
    geometry = (p["stride"], p["padding"], p["dilation"], p["groups"])
    mask = None
    if p["kind"] == "task":
        owner = _in_layout(owner_map(w.shape, generator=g), p["weight_layout"], "owner")
        task = torch.randint(1, 4, (p["batch"],), generator=g) if p["per_sample"] else p["task"]

        def op(module, x, w, b, om, mask):
            return module.task_conv2d(x, w, owner, task, b, *geometry, out_mask=om)
    else:
        mask = _in_layout(torch.rand(w.shape, generator=g), p["weight_layout"], "owner")
        mask = _leaf(mask, dtype) if p["kind"] == "soft" else (mask > 0.5).to(torch.uint8)

        def op(module, x, w, b, om, mask):
            return module.masked_conv2d(x, w, mask, b, *geometry, out_mask=om)
    got = _check_against_reference(op, [x, w, b, om, mask], dtype)
    y = got[0]
    if p["layout"] == "channels_last" and not x.is_contiguous():
        assert y.is_contiguous(memory_format=torch.channels_last)
    if p["kind"] == "task":
        assert torch.all(got[2][~_selected(owner, task)] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("images", [(1, 8, 8), (3, 4, 5), (1, 9, 9)])  # 64, 60 pixels: rows; 81: conv
@pytest.mark.parametrize("kind", ["task", "mixed", "uint8", "soft"])
def test_pointwise_conv_of_few_pixels_matches_reference(dtype, images, kind):
    """1x1 convolutions (stride 1, no padding) of at most 64 channels_last pixels run as a
    linear layer over the pixels; the rest as convolutions."""
    g = torch.Generator().manual_seed(6)
    batch, h, w_ = images
    x = _leaf(torch.randn(batch, 64, h, w_, generator=g).contiguous(memory_format=torch.channels_last), dtype)
    w = _leaf(torch.randn(40, 64, 1, 1, generator=g), dtype)
    b = _leaf(torch.randn(40, generator=g), dtype)
    om = _leaf(torch.rand(batch, 40, generator=g), dtype)
    if kind in ("task", "mixed"):
        owner = owner_map(w.shape, generator=g)
        task = torch.randint(1, 4, (batch,), generator=g) if kind == "mixed" else 2

        def op(module, x, w, b, om, mask):
            return module.task_conv2d(x, w, owner, task, b, out_mask=om)
    else:
        mask = torch.rand(w.shape, generator=g)
        mask = _leaf(mask, dtype) if kind == "soft" else (mask > 0.5).to(torch.uint8)

        def op(module, x, w, b, om, mask):
            return module.masked_conv2d(x, w, mask, b, out_mask=om)
    got = _check_against_reference(op, [x, w, b, om, None if kind in ("task", "mixed") else mask], dtype)
    assert got[0].is_contiguous(memory_format=torch.channels_last)


def test_conv2d_frozen_layer_gets_zero_weight_grad():
    """A task that owns nothing in a layer: no weight gradient is computed, all zeros."""
    x = torch.randn(3, 4, 6, 6)
    w = torch.randn(5, 4, 3, 3, requires_grad=True)
    owner = torch.randint(1, 3, w.shape, dtype=torch.uint8)
    with maskops.use_backend("cpu"):
        (gw,) = torch.autograd.grad(maskops.task_conv2d(x, w, owner, 3, padding=1).sum(), [w])
    assert torch.all(gw == 0)


# ----------------------------------------------------------------------------- the ops' cpu kernels

ops = torch.ops.maskops
CPU, TORCH = backends.IDS["cpu"], backends.IDS["torch"]


def _selection(mode, shape, routing, g):
    """(mode, owner, mask, task, tasks, order, offsets) arguments of a backward op."""
    owner = owner_map(shape, generator=g) if mode in (Mode.visible, Mode.trainable) else None
    mask = torch.rand(shape, generator=g, dtype=torch.float64) if mode == Mode.mask else None
    return (int(mode), owner, mask, 2, *(routing if owner is not None else (None,) * 3))


@pytest.mark.parametrize("mode", list(Mode)[:4], ids=lambda m: m.name)
@pytest.mark.parametrize("mixed", [False, True])
def test_backward_ops_match_the_torch_backend(mode, mixed):
    """Every mode of the backward ops: the cpu kernels against the torch backend's."""
    g = torch.Generator().manual_seed(int(mode))
    routing = tuple(maskops.route(torch.tensor([2, 1, 3]))) if mixed else (None,) * 3
    x, w = torch.randn(3, 2, 19, generator=g, dtype=torch.float64), torch.randn(7, 19, dtype=torch.float64)
    grad = torch.randn(3, 2, 7, generator=g, dtype=torch.float64)
    sel = _selection(mode, w.shape, routing, g)
    for op, args in ((ops.linear_grad_input, (grad, w)), (ops.linear_grad_weight, (grad, x))):
        torch.testing.assert_close(op(*args, *sel, CPU), op(*args, *sel, TORCH))
    xc = torch.randn(3, 4, 7, 6, generator=g, dtype=torch.float64)
    wc = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    gc = torch.randn(3, 6, 4, 2, generator=g, dtype=torch.float64)
    selc = _selection(mode, wc.shape, routing, g)
    geometry = ([2, 1], [1, 0], [1, 2], 2)
    for op, args in ((ops.conv2d_grad_input, (gc, wc, *selc, list(xc.shape))),
                     (ops.conv2d_grad_weight, (gc, xc, *selc, list(wc.shape)))):
        torch.testing.assert_close(op(*args, *geometry, CPU), op(*args, *geometry, TORCH))


def test_conv_keeps_channels_last():
    x = torch.randn(3, 4, 7, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    with maskops.use_backend("cpu"):
        y = maskops.task_conv2d(x, w, owner_map(w.shape), torch.tensor([2, 1, 3]), padding=1, groups=2)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_ops_reject_bad_arguments():
    x, w = torch.randn(5, 19, dtype=torch.float64), torch.randn(7, 19, dtype=torch.float64)
    owner, grad = owner_map(w.shape), torch.randn(5, 7, dtype=torch.float64)
    none = (None, None, None)
    with pytest.raises(ValueError, match="mode must be"):
        ops.linear_grad_input(grad, w, 7, owner, None, 2, *none, CPU)
    with pytest.raises(ValueError, match="owner is required"):
        ops.linear_grad_input(grad, w, int(Mode.visible), None, None, 2, *none, CPU)
    with pytest.raises(TypeError, match="owner must be a torch.uint8"):
        ops.linear_grad_input(grad, w, int(Mode.visible), owner.float(), None, 2, *none, CPU)
    with pytest.raises(ValueError, match="task must be in 1..255"):
        ops.linear_grad_input(grad, w, int(Mode.visible), owner, None, 0, *none, CPU)
    routing = maskops.route(torch.tensor([1, 2, 1, 3, 2]))
    with pytest.raises(ValueError, match="comes with its order and offsets"):
        ops.task_linear(x, w, owner, 0, routing.task, None, None, None, None, CPU)
    bad = routing.offsets.clone()
    bad[-1] = 9  # a routing of another batch: refused before any row is read
    with pytest.raises(ValueError, match="not a routing of this batch"):
        ops.task_linear(x, w, owner, 0, routing.task, routing.order, bad, None, None, CPU)
    fp8 = torch.float8_e4m3fn
    with pytest.raises(RuntimeError, match="does not support torch.Float8_e4m3fn tensors on cpu"):
        ops.task_linear(x.to(fp8), w.to(fp8), owner, 1, *none, None, None, CPU)


def test_the_cpu_backend_needs_no_python():
    """Loading maskops._C alone registers every op with its C++ kernels; only the Python
    backends need the package."""
    code = ("import torch; torch.ops.load_library({so!r}); "
            "x, w = torch.randn(3, 5), torch.randn(4, 5); o = torch.ones(4, 5, dtype=torch.uint8); "
            "y = torch.ops.maskops.task_linear(x, w, o, 1, None, None, None, None, None, 0); "
            "assert torch.allclose(y, x @ w.t(), atol=1e-5)\n"
            "try:\n torch.ops.maskops.task_linear(x, w, o, 1, None, None, None, None, None, 1)\n"
            "except RuntimeError as e:\n assert 'import maskops' in str(e), e\n"
            "else:\n raise AssertionError('the torch backend ran without maskops')")
    subprocess.run([sys.executable, "-c", code.format(so=_C.__file__)], check=True, cwd="/")


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




def test_input_gradient_is_the_same_on_every_call():
    """Small batches sum per-thread partial input gradients: in a fixed split and order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(4)
        x = torch.randn(2, 1024, generator=g, requires_grad=True)
        w = torch.randn(8192, 1024, generator=g)
        owner = owner_map(w.shape, generator=g)
        upstream = torch.randn(2, 8192, generator=g)
        with maskops.use_backend("cpu"):
            results = [torch.autograd.grad(maskops.task_linear(x, w, owner, 2), [x], upstream)[0]
                       for _ in range(8)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(r, results[0]) for r in results[1:])


def _block_owner(shape, hidden_fraction, generator, block=(32, 64)):
    """An owner whose (32 x 64)-blocks of the (out, in x kh x kw) view are each wholly owned by
    task 1 or 2, or hidden (3); some visible blocks partly pruned (0)."""
    rows, cols = shape[0], math.prod(shape[1:])
    grid = (-(-rows // block[0]), -(-cols // block[1]))
    pick = torch.rand(grid, generator=generator)
    per_block = torch.where(pick < hidden_fraction, 3, torch.where(pick < 0.8, 1, 2)).to(torch.uint8)
    owner = per_block.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    owner[torch.rand(owner.shape, generator=generator) < 0.1] = 0
    return owner.reshape(shape).contiguous()


@pytest.mark.parametrize("geometry", [dict(), dict(stride=2, padding=1), dict(padding=(2, 1), dilation=2),
                                      dict(kernel=1)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("weight_layout", ["contiguous", "channels_last"])
def test_conv_of_visible_blocks_matches_reference(geometry, layout, weight_layout):
    """Convolutions whose task cannot see a quarter or more of the weight's blocks run as
    products of the visible blocks only; at stride 1 the 20 x 17 output splits into pixel chunks."""
    g = torch.Generator().manual_seed(2)
    kernel = geometry.pop("kernel", 3)
    x = torch.randn(3, 40, 20, 17, generator=g, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(70, 40, kernel, kernel, generator=g, dtype=torch.float64)
    w = _in_layout(w, weight_layout, "weight").requires_grad_()
    b = torch.randn(70, generator=g, dtype=torch.float64, requires_grad=True)
    owner = _in_layout(_block_owner(w.shape, 0.5, g), weight_layout, "owner")
    assert maskops._C.cached_visible_blocks(owner, 2).eq(0).double().mean() >= 0.25  # the block path
    for task in (2, torch.tensor([1, 2, 2])):
        with maskops.use_backend("cpu"):
            y = maskops.task_conv2d(x, w, owner, task, b, **geometry)
            got = [y] + grads(y, [x, w, b])
        expected = reference.task_conv2d(x, w, owner, task, b, **geometry)
        assert_close_all(got, [expected] + grads(expected, [x, w, b]), torch.float64)
    x_nan = x.detach().clone()
    x_nan[0, 0, 0, 0] = float("nan")
    with maskops.use_backend("cpu"):
        y = maskops.task_conv2d(x_nan, w.detach(), owner, 2, **geometry)
    assert torch.equal(torch.isnan(y), torch.isnan(reference.task_conv2d(x_nan, w.detach(), owner, 2, **geometry)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_reads_task_bit_maps_and_rebuilds_them(simd, dtype):
    """A single-task convolution whose weight rows (Cin * kh * kw = 288) are whole words masks
    its weight through the task's cached 1-bit map, rebuilt after the owner changes."""
    g = torch.Generator().manual_seed(4)
    x = _leaf(torch.randn(2, 32, 9, 7, generator=g), dtype)
    w = _leaf(torch.randn(24, 32, 3, 3, generator=g), dtype)
    owner = owner_map(tuple(w.shape), num_tasks=3, generator=g)
    for step in range(2):
        for task in (1, 3):
            with maskops.use_backend("cpu"):
                y = maskops.task_conv2d(x, w, owner, task, padding=1)
                got = [y] + grads(y, [x, w])
            expected = reference.task_conv2d(x, w, owner, task, padding=1)
            assert_close_all(got, [expected] + grads(expected, [x, w]), dtype)
        owner[:12] = owner[:12].flip(1)  # a new version of the same owner


def test_channels_last_owner_bit_maps_follow_its_memory_order():
    """A channels_last owner's cached 1-bit map packs its rows (out, kh, kw, in) as they lie
    in memory, so that a channels_last weight is masked as one run; it is built once."""
    owner = owner_map((8, 32, 3, 3), generator=torch.Generator().manual_seed(1))
    channels_last = owner.contiguous(memory_format=torch.channels_last)
    bits = _C.cached_visible_bits(channels_last, 2)
    assert bits is _C.cached_visible_bits(channels_last, 2)
    torch.testing.assert_close(bits, ops.pack_visible(owner.permute(0, 2, 3, 1).reshape(8, -1), 2))
    torch.testing.assert_close(_C.cached_visible_bits(owner, 2), ops.pack_visible(owner.reshape(8, -1), 2))
    torch.testing.assert_close(_C.cached_visible_blocks(channels_last, 2), _C.cached_visible_blocks(owner, 2))


def test_conv_weight_grad_of_channels_last_weights_is_contiguous():
    """The weight gradient op keeps the shape and layout its fake kernel states."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 32, 5, 5, generator=g, dtype=torch.float64)
    grad = torch.randn(2, 8, 5, 5, generator=g, dtype=torch.float64)
    owner = owner_map((8, 32, 3, 3), generator=g)
    geometry = ([1, 1], [1, 1], [1, 1], 1)
    got = [ops.conv2d_grad_weight(grad, x, int(Mode.trainable), o, None, 2, None, None, None,
                                  [8, 32, 3, 3], *geometry, CPU)
           for o in (owner, owner.contiguous(memory_format=torch.channels_last))]
    assert all(gw.is_contiguous() for gw in got)
    torch.testing.assert_close(got[0], got[1])
    assert torch.all(got[1][owner != 2] == 0)


@pytest.mark.parametrize("task", [2, "mixed"])
def test_linear_many_rows_multiply_only_visible_blocks(task):
    """Groups of more than 16 rows: one product per run of visible blocks (the weight itself
    where a run is fully visible, a masked copy where partly); skipped runs keep NaN rows NaN."""
    g = torch.Generator().manual_seed(9)
    n, k, m = 520, 330, 48  # weight panels of several block rows
    owner = _block_owner((n, k), 0.4, g)
    owner[:32, :128] = 1  # wholly visible blocks, read without the owner
    owner[32:96] = 1      # block rows that see all of K: one product for both
    x = torch.randn(m, k, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(n, k, generator=g, dtype=torch.float64, requires_grad=True)
    tasks = 2 if task == 2 else torch.tensor([1, 2] * (m // 2)).sort().values
    with maskops.use_backend("cpu"):
        y = maskops.task_linear(x, w, owner, tasks)
        got = [y] + grads(y, [x, w])
    expected = reference.task_linear(x, w, owner, tasks)
    assert_close_all(got, [expected] + grads(expected, [x, w]), torch.float64)
    x_nan = x.detach().clone()
    x_nan[5, 3] = float("nan")
    with maskops.use_backend("cpu"):
        y = maskops.task_linear(x_nan, w.detach(), owner, tasks)
    assert torch.equal(torch.isnan(y), torch.isnan(reference.task_linear(x_nan, w.detach(), owner, tasks)))


def test_kernels_use_torch_threads():
    """The kernels' parallel loops share torch's OpenMP runtime and thread count, so the two
    never oversubscribe the cores."""
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert _C.max_threads() == threads
    finally:
        torch.set_num_threads(before)
