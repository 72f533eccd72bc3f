"""The four public ops (maskops/ops.py) against maskops.reference on every CPU backend, and
what a user of them relies on: autograd, in-place use of outputs, torch.compile and export."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import maskops
from maskops import reference
from tests.helpers import assert_close_all, cpu_backends, grads, op_backends, owner_map

BACKENDS = cpu_backends()
DTYPES = [torch.float32, torch.float64]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _leaf(t, dtype, grad=True):
    return t.to(dtype).detach().requires_grad_(grad)


@st.composite
def linear_problems(draw):
    batch = draw(st.integers(0, 5))
    inner = draw(st.sampled_from([(), (3,), (2, 2)]))
    n, k = draw(st.integers(1, 19)), draw(st.integers(1, 23))
    per_sample = draw(st.booleans()) and batch > 0
    out_mask = draw(st.sampled_from([None, "channel", "sample"]))
    if out_mask == "sample" and batch == 0:
        out_mask = "channel"
    return dict(batch=batch, inner=inner, n=n, k=k, per_sample=per_sample,
                bias=draw(st.booleans()), out_mask=out_mask, task=draw(st.integers(1, 3)),
                transposed_x=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


def _build_linear(p, dtype):
    g = torch.Generator().manual_seed(p["seed"])
    shape = (p["batch"], *p["inner"], p["k"])
    x = torch.randn(shape, generator=g)
    if p["transposed_x"] and len(shape) >= 2:
        x = torch.randn(shape[:-2] + (shape[-1], shape[-2]), generator=g).transpose(-1, -2)
    x = _leaf(x, dtype)
    w = _leaf(torch.randn(p["n"], p["k"], generator=g), dtype)
    owner = owner_map((p["n"], p["k"]), generator=g)
    task = torch.randint(1, 4, (p["batch"],), generator=g) if p["per_sample"] else p["task"]
    b = _leaf(torch.randn(p["n"], generator=g), dtype) if p["bias"] else None
    om = None
    if p["out_mask"] == "channel":
        om = (torch.rand(p["n"], generator=g) > 0.3).to(dtype)
    elif p["out_mask"] == "sample":
        om = _leaf(torch.rand(p["batch"], p["n"], generator=g), dtype)
    return x, w, owner, task, b, om


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(p=linear_problems())
def test_task_linear_matches_reference(backend, dtype, p):
    x, w, owner, task, b, om = _build_linear(p, dtype)
    with maskops.use_backend(backend):
        y = maskops.task_linear(x, w, owner, task, b, out_mask=om)
    expected = reference.task_linear(x, w, owner, task, b, out_mask=om)
    assert y.shape == expected.shape
    inputs = [x, w, b, om]
    assert_close_all([y] + grads(y, inputs), [expected] + grads(expected, inputs), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_kind", ["bool", "uint8", "soft"])
@SETTINGS
@given(p=linear_problems())
def test_masked_linear_matches_reference(backend, dtype, mask_kind, p):
    x, w, _, _, b, om = _build_linear(p, dtype)
    g = torch.Generator().manual_seed(p["seed"] + 1)
    mask = torch.rand(w.shape, generator=g)
    mask = _leaf(mask, dtype) if mask_kind == "soft" else (mask > 0.4).to(getattr(torch, mask_kind))
    trainable = (torch.rand(w.shape, generator=g) > 0.5) if p["per_sample"] else None
    with maskops.use_backend(backend):
        y = maskops.masked_linear(x, w, mask, b, out_mask=om, trainable=trainable)
    expected = reference.masked_linear(x, w, mask, b, out_mask=om, trainable=trainable)
    inputs = [x, w, b, om, mask if mask.requires_grad else None]
    assert_close_all([y] + grads(y, inputs), [expected] + grads(expected, inputs), dtype)


@st.composite
def conv_problems(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.sampled_from(["int", "pair", "same", "valid"]))
    if padding == "same":
        stride = (1, 1)
    padding = {"int": draw(st.integers(0, 2)), "pair": (draw(st.integers(0, 2)), draw(st.integers(0, 1))),
               "same": "same", "valid": "valid"}[padding]
    h = draw(st.integers(dilation[0] * (kh - 1) + 1, 9))
    w = draw(st.integers(dilation[1] * (kw - 1) + 1, 9))
    batch = draw(st.integers(0, 3))
    return dict(groups=groups, cin=cin, cout=cout, kernel=(kh, kw), stride=stride,
                dilation=dilation, padding=padding, hw=(h, w), batch=batch,
                per_sample=draw(st.booleans()) and batch > 0,
                channels_last=draw(st.booleans()), bias=draw(st.booleans()),
                out_mask=draw(st.sampled_from([None, "channel", "sample"])) if batch else None,
                task=draw(st.integers(1, 3)), seed=draw(st.integers(0, 2**16)))


def _build_conv(p, dtype):
    g = torch.Generator().manual_seed(p["seed"])
    x = torch.randn(p["batch"], p["cin"], *p["hw"], generator=g).to(dtype)
    if p["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.detach().requires_grad_()
    wshape = (p["cout"], p["cin"] // p["groups"], *p["kernel"])
    w = _leaf(torch.randn(wshape, generator=g), dtype)
    owner = owner_map(wshape, generator=g)
    task = torch.randint(1, 4, (p["batch"],), generator=g) if p["per_sample"] else p["task"]
    b = _leaf(torch.randn(p["cout"], generator=g), dtype) if p["bias"] else None
    om = {None: None,
          "channel": (torch.rand(p["cout"], generator=g) > 0.3).to(dtype),
          "sample": _leaf(torch.rand(p["batch"], p["cout"], generator=g), dtype)}[p["out_mask"]]
    geometry = (p["stride"], p["padding"], p["dilation"], p["groups"])
    return x, w, owner, task, b, om, geometry


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(p=conv_problems())
def test_task_conv2d_matches_reference(backend, dtype, p):
    x, w, owner, task, b, om, geometry = _build_conv(p, dtype)
    with maskops.use_backend(backend):
        y = maskops.task_conv2d(x, w, owner, task, b, *geometry, out_mask=om)
    expected = reference.task_conv2d(x, w, owner, task, b, *geometry, out_mask=om)
    assert y.shape == expected.shape
    if p["channels_last"] and not x.is_contiguous():
        assert y.is_contiguous(memory_format=torch.channels_last)
    inputs = [x, w, b, om]
    assert_close_all([y] + grads(y, inputs), [expected] + grads(expected, inputs), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(p=conv_problems(), soft=st.booleans())
def test_masked_conv2d_matches_reference(backend, p, soft):
    dtype = torch.float64
    x, w, _, _, b, om, geometry = _build_conv(p, dtype)
    mask = torch.rand(w.shape, generator=torch.Generator().manual_seed(p["seed"]))
    mask = _leaf(mask, dtype) if soft else mask > 0.5
    with maskops.use_backend(backend):
        y = maskops.masked_conv2d(x, w, mask, b, *geometry, out_mask=om)
    expected = reference.masked_conv2d(x, w, mask, b, *geometry, out_mask=om)
    inputs = [x, w, b, om, mask if soft else None]
    assert_close_all([y] + grads(y, inputs), [expected] + grads(expected, inputs), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_grad_is_exactly_zero_outside_trainable(backend):
    x = torch.randn(6, 4, 33, dtype=torch.float32)
    w = torch.randn(17, 33, requires_grad=True)
    owner = owner_map(w.shape)
    tasks = torch.tensor([1, 3, 2, 3, 1, 2])
    with maskops.use_backend(backend):
        (gw,) = torch.autograd.grad(maskops.task_linear(x, w, owner, tasks).sum(), [w])
        (gw2,) = torch.autograd.grad(maskops.task_linear(x, w, owner, 2).sum(), [w])
    assert torch.all(gw[owner == 0] == 0)
    assert torch.all(gw2[owner != 2] == 0)
    assert torch.count_nonzero(gw2[owner == 2]) > 0
    for t in (1, 2, 3):  # each task's own weights get exactly that task's rows' gradient
        rows = x[tasks == t].reshape(-1, 33)
        torch.testing.assert_close(gw[owner == t], (torch.ones(rows.shape[0], 17).t() @ rows)[owner == t])


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_fp64(backend):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    om = torch.rand(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    # Owner of only {0, t}: there the visible and trainable sets agree, so the
    # restricted weight gradient is the true derivative.
    owner = (torch.randint(0, 2, w.shape, generator=g) * 2).to(torch.uint8)
    soft = torch.rand(w.shape, dtype=torch.float64, generator=g, requires_grad=True)
    xc = torch.randn(2, 4, 5, 5, dtype=torch.float64, generator=g, requires_grad=True)
    wc = torch.randn(6, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    oc = (torch.randint(0, 2, wc.shape, generator=g) * 2).to(torch.uint8)
    softc = torch.rand(wc.shape, dtype=torch.float64, generator=g, requires_grad=True)
    bc = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
    with maskops.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda x, w, b, om: maskops.task_linear(x, w, owner, torch.tensor([2, 2, 2]), b, out_mask=om),
            (x, w, b, om))
        assert torch.autograd.gradcheck(
            lambda x, w, m, b: maskops.masked_linear(x, w, m, b), (x, w, soft, b))
        assert torch.autograd.gradcheck(
            lambda x, w, b: maskops.task_conv2d(x, w, oc, 2, b, 2, 1, 1, 2), (xc, wc, bc))
        assert torch.autograd.gradcheck(
            lambda x, w, m: maskops.masked_conv2d(x, w, m, None, 1, "same", 2, 2), (xc, wc, softc))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    w = torch.randn(4, 5, requires_grad=True)
    owner = owner_map(w.shape)
    with maskops.use_backend(backend):
        y = maskops.task_linear(torch.randn(0, 5), w, owner, torch.zeros(0, dtype=torch.long))
        assert y.shape == (0, 4)
        (gw,) = torch.autograd.grad(y.sum(), [w])
        assert torch.equal(gw, torch.zeros_like(w))
        yc = maskops.task_conv2d(torch.randn(0, 2, 5, 5), torch.randn(3, 2, 3, 3), owner_map((3, 2, 3, 3)), 1)
        assert yc.shape == (0, 3, 3, 3)
        assert maskops.task_linear(torch.randn(2, 0), torch.randn(3, 0), owner_map((3, 0)), 1).shape == (2, 3)


def test_unbatched_inputs():
    w, owner = torch.randn(4, 5), owner_map((4, 5))
    x = torch.randn(5)
    torch.testing.assert_close(maskops.task_linear(x, w, owner, 2), reference.task_linear(x, w, owner, 2))
    wc, oc = torch.randn(3, 2, 3, 3), owner_map((3, 2, 3, 3))
    xc = torch.randn(2, 6, 6)
    torch.testing.assert_close(maskops.task_conv2d(xc, wc, oc, 2, padding=1),
                               reference.task_conv2d(xc, wc, oc, 2, padding=1))


def _tiny_calls():
    """(name, fn(x-like inputs) -> output, leaves) for each public op, tiny shapes."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 5, generator=g, requires_grad=True)
    w = torch.randn(4, 5, generator=g, requires_grad=True)
    owner = owner_map(w.shape, generator=g)
    xc = torch.randn(2, 4, 5, 5, generator=g, requires_grad=True)
    wc = torch.randn(3, 4, 3, 3, generator=g, requires_grad=True)
    oc = owner_map(wc.shape, generator=g)
    return [
        ("task_linear", lambda: maskops.task_linear(x, w, owner, torch.tensor([1, 3, 2])), [x, w]),
        ("masked_linear", lambda: maskops.masked_linear(x, w, owner > 1), [x, w]),
        ("task_conv2d", lambda: maskops.task_conv2d(xc, wc, oc, 2, padding=1), [xc, wc]),
        ("masked_conv2d", lambda: maskops.masked_conv2d(xc, wc, oc > 1, padding=1), [xc, wc]),
    ]


@pytest.mark.parametrize("backend", op_backends())
@pytest.mark.parametrize("case", range(4))
def test_outputs_can_be_modified_in_place(backend, case):
    """An op's output is no view: an in-place activation after it works in training."""
    name, call, leaves = _tiny_calls()[case]
    with maskops.use_backend(backend):
        y = call()
        assert not y._is_view(), name
        expected = torch.autograd.grad(torch.relu(call()).sum(), leaves)
        torch.relu_(y)
        got = torch.autograd.grad(y.sum(), leaves)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("backend", op_backends())
def test_converted_model_with_inplace_activation_trains(backend):
    model = maskops.convert(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(inplace=True),
                                                torch.nn.Linear(4, 2), torch.nn.Dropout(0.5, inplace=True)))
    with maskops.use_backend(backend):
        model(torch.randn(2, 8)).sum().backward()
    assert model[0].weight.grad is not None and torch.count_nonzero(model[0].weight.grad) > 0


def test_double_backward_raises():
    x = torch.randn(3, 5, requires_grad=True)
    w = torch.randn(4, 5, requires_grad=True)
    (gx,) = torch.autograd.grad(maskops.task_linear(x, w, owner_map(w.shape), 2).sum(), [x],
                                create_graph=True)
    with pytest.raises(RuntimeError, match="not implemented"):
        gx.sum().backward()


@pytest.mark.parametrize("backend", op_backends())
@pytest.mark.parametrize("task", [2, "per-sample"])
def test_compile_fullgraph_forward_and_backward(backend, task):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 5))
    maskops.convert(model)
    for layer in (model[0], model[3]):
        layer.owner.copy_(owner_map(layer.weight.shape))
    maskops.set_task(model, task if task == 2 else torch.tensor([1, 3, 2]))
    x = torch.randn(3, 3, 4, 4)
    with maskops.use_backend(backend):
        expected = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        y = compiled(x)
        torch.testing.assert_close(y, expected)
        y.sum().backward()
    grad = model[3].weight.grad
    frozen = model[3].owner != 2 if task == 2 else model[3].owner == 0
    assert torch.all(grad[frozen] == 0) and torch.count_nonzero(grad) > 0


@pytest.mark.parametrize("backend", op_backends())
def test_export(backend):
    model = maskops.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                                                torch.nn.Linear(16, 5))).eval()
    for layer in (model[0], model[2]):
        layer.owner.copy_(owner_map(layer.weight.shape))
    maskops.set_task(model, 2)
    x = torch.randn(2, 3, 4, 4)
    with maskops.use_backend(backend):
        exported = torch.export.export(model, (x,))
        targets = {str(node.target) for node in exported.graph.nodes}
        assert "maskops.task_linear.default" in targets and "maskops.task_conv2d.default" in targets
        torch.testing.assert_close(exported.module()(x), model(x))


HOST_READS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::unique",
              "aten::_unique", "aten::_unique2")


def test_mixed_task_forward_reads_nothing_on_the_host():
    model = maskops.convert(torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        *[torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()) for _ in range(4)]))
    for module in model.modules():
        if isinstance(module, (maskops.nn.MaskedLinear, maskops.nn.MaskedConv2d)):
            module.owner.copy_(owner_map(module.weight.shape))
    x = torch.randn(6, 3, 4, 4)
    maskops.set_task(model, torch.tensor([1, 2, 3, 3, 1, 2]))
    model(x)  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        y = model(x)
    reads = [e.name for e in prof.events() if e.name in HOST_READS]
    assert reads == []
    y.sum()  # the profile saw the forward
    expected = model(x)
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("backend", op_backends())
def test_1x1_conv_with_dilation_is_the_undilated_conv(backend):
    """A dilation along an axis of kernel size 1 changes nothing: the ops drop it, which also
    keeps clear of a oneDNN crash in torch 2.13 on exactly this case."""
    x = torch.randn(3, 2, 4, 1).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(2, 2, 1, 1), torch.randn(2)
    owner = owner_map(w.shape)
    with maskops.use_backend(backend):
        for _ in range(5):
            y = maskops.task_conv2d(x, w, owner, 2, b, (1, 2), 1, 2)
    expected = torch.nn.functional.conv2d(x.contiguous(), reference.task_weight(w, owner, 2), b, (1, 2), 1)
    torch.testing.assert_close(y, expected)


# ----------------------------------------------------------------------------- edge cases


def _leaves(*tensors):
    return [t.detach().requires_grad_() for t in tensors]


@pytest.mark.parametrize("backend", op_backends())
def test_empty_problems_forward_and_backward(backend):
    """Empty batches, zero outputs and zero input channels, with out_mask gradients."""
    cases = []
    x, w, b, om = _leaves(torch.randn(0, 5), torch.randn(4, 5), torch.randn(4), torch.rand(0, 4))
    cases.append(((x, w, b, om), lambda: maskops.task_linear(x, w, owner_map((4, 5)), 2, b, out_mask=om),
                  lambda: reference.task_linear(x, w, owner_map((4, 5)), 2, b, out_mask=om)))
    x3, om3 = _leaves(torch.randn(0, 3, 5), torch.rand(0, 4))
    cases.append(((x3, w, om3), lambda: maskops.task_linear(x3, w, owner_map((4, 5)), 1, out_mask=om3),
                  lambda: reference.task_linear(x3, w, owner_map((4, 5)), 1, out_mask=om3)))
    x0, w0 = _leaves(torch.randn(3, 5), torch.randn(0, 5))
    cases.append(((x0, w0), lambda: maskops.masked_linear(x0, w0, w0 > 0),
                  lambda: reference.masked_linear(x0, w0, w0 > 0)))
    xc, wc, bc, omc = _leaves(torch.randn(0, 2, 5, 5), torch.randn(3, 2, 3, 3), torch.randn(3), torch.rand(0, 3))
    oc = owner_map(wc.shape)
    cases.append(((xc, wc, bc, omc), lambda: maskops.task_conv2d(xc, wc, oc, 2, bc, out_mask=omc),
                  lambda: reference.task_conv2d(xc, wc, oc, 2, bc, out_mask=omc)))
    xz, wz, bz = _leaves(torch.randn(2, 0, 5, 5), torch.randn(6, 0, 3, 3), torch.randn(6))
    # Zero input channels: the bias alone (F.conv2d itself gets the output channels wrong here).
    cases.append(((xz, wz, bz), lambda: maskops.task_conv2d(xz, wz, owner_map(wz.shape), 1, bz, padding=1),
                  lambda: (bz.reshape(1, -1, 1, 1) + 0 * wz.sum() + 0 * xz.sum()).expand(2, 6, 5, 5)))
    for inputs, ours, theirs in cases:
        with maskops.use_backend(backend):
            y = ours()
            got = [y] + grads(y, list(inputs))
        expected = theirs()
        assert_close_all(got, [expected] + grads(expected, list(inputs)), torch.float32)


@pytest.mark.parametrize("backend", op_backends())
def test_binary_masks_select(backend):
    """A bool/uint8 mask selects: any nonzero value keeps the weight as it is (a 2 is a 1)."""
    x, w = torch.randn(3, 5), torch.randn(4, 5)
    xc, wc = torch.randn(2, 2, 5, 5), torch.randn(3, 2, 3, 3)
    mask, maskc = owner_map(w.shape) * 2, owner_map(wc.shape) * 2
    with maskops.use_backend(backend):
        y = maskops.masked_linear(x, w, mask)
        yc = maskops.masked_conv2d(xc, wc, maskc, padding=1)
    torch.testing.assert_close(y, reference.masked_linear(x, w, mask > 0))
    torch.testing.assert_close(yc, reference.masked_conv2d(xc, wc, maskc > 0, padding=1))


@pytest.mark.parametrize("backend", op_backends())
def test_trainable_restricts_and_does_not_scale(backend):
    x, w = torch.randn(3, 5), torch.randn(4, 5, requires_grad=True)
    mask = torch.rand(4, 5)
    trainable = owner_map(w.shape)  # values 0..3: nonzero means trainable
    with maskops.use_backend(backend):
        (got,) = torch.autograd.grad(maskops.masked_linear(x, w, mask, trainable=trainable).sum(), [w])
        (expected,) = torch.autograd.grad(maskops.masked_linear(x, w, mask, trainable=trainable > 0).sum(), [w])
        with pytest.raises(TypeError, match="trainable must be bool or uint8"):
            maskops.masked_linear(x, w, mask, trainable=trainable.float())
    torch.testing.assert_close(got, expected)
    assert torch.all(got[trainable == 0] == 0)


def _four_calls(x, w, owner, xc, wc, oc):
    return {
        "task_linear": lambda: maskops.task_linear(x, w, owner, 2),
        "masked_linear": lambda: maskops.masked_linear(x, w, reference.visible(owner, 2)),
        "task_conv2d": lambda: maskops.task_conv2d(xc, wc, oc, 2, padding=1),
        "masked_conv2d": lambda: maskops.masked_conv2d(xc, wc, reference.visible(oc, 2), padding=1),
    }


@pytest.mark.parametrize("backend", op_backends())
@pytest.mark.parametrize("op", ["task_linear", "masked_linear", "task_conv2d", "masked_conv2d"])
def test_nonfinite_invisible_weights_never_reach_the_output(backend, op):
    x, xc = torch.randn(17, 40, requires_grad=True), torch.randn(2, 4, 6, 6, requires_grad=True)
    w, wc = torch.randn(24, 40), torch.randn(6, 4, 3, 3)
    owner, oc = owner_map(w.shape), owner_map(wc.shape)
    owner[:8] = 3  # whole rows invisible to task 2: skipped panels and tiles too
    for weight, own in ((w, owner), (wc, oc)):
        weight[own == 0] = float("nan")
        weight[own == 3] = float("inf")
    with maskops.use_backend(backend):
        y = _four_calls(x, w, owner, xc, wc, oc)[op]()
        (gx,) = torch.autograd.grad(y.sum(), [x if "linear" in op else xc])
    assert torch.isfinite(y).all() and torch.isfinite(gx).all()


@pytest.mark.parametrize("backend", op_backends())
@pytest.mark.parametrize("rows", [1, 3, 16, 17, 40])
@pytest.mark.parametrize("hidden", [32, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_nonfinite_rows_of_x_follow_dense_math(backend, rows, hidden, with_bias):
    """A row of x holding NaN or inf gives what x @ (w * visible).T + bias gives -- NaN in every
    output where it holds a NaN -- on every path, including products skipped as invisible (the
    first `hidden` outputs see nothing of task 2; 64: the whole weight)."""
    g = torch.Generator().manual_seed(rows)
    x, w = torch.randn(rows, 96, generator=g), torch.randn(64, 96, generator=g)
    bias = torch.randn(64, generator=g) if with_bias else None
    owner = owner_map(w.shape, generator=g)
    owner[:hidden] = 3
    x[0, 5] = float("nan")
    if rows > 1:
        x[1, 70] = float("inf")
    grad = torch.randn(rows, 64, generator=g)
    grad[-1, 3] = float("nan")
    with maskops.use_backend(backend):
        y = maskops.task_linear(x, w, owner, 2, bias)
        gx = torch.ops.maskops.linear_grad_input(grad, w, int(maskops.modes.Mode.visible), owner,
                                                 None, 2, None, None, None, maskops.backends.current())
    expected = reference.task_linear(x, w, owner, 2, bias)
    assert torch.equal(torch.isfinite(y), torch.isfinite(expected))
    assert torch.isnan(y[0]).all()
    expected_gx = grad @ (w * reference.visible(owner, 2))
    assert torch.equal(torch.isfinite(gx), torch.isfinite(expected_gx)) and torch.isnan(gx[-1]).all()
    finite = torch.isfinite(expected)
    torch.testing.assert_close(y[finite], expected[finite])


def test_zero_size_kernel_is_rejected():
    with pytest.raises(ValueError, match="weight's kernel must be at least 1 x 1"):
        maskops.task_conv2d(torch.randn(2, 4, 5, 5), torch.randn(6, 4, 0, 3), owner_map((6, 4, 0, 3)), 1)
