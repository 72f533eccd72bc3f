"""The `triton` backend (maskops/triton through maskops/backends/triton_backend.py) against
maskops.reference: forward and backward, per-sample tasks,
out_mask, conv geometry, tile skipping and the launch configs.

Without a GPU these run in Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1): small shapes, fp32/fp16.  Tests marked gpu use realistic shapes.
"""
import pytest
import torch

import maskops
from maskops import reference
from maskops.backends import triton_backend
from maskops.modes import Mode
from maskops.selection import Vis

pytest.importorskip("triton")

from maskops.triton import conv, groups, launch, masks, matmul  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
# GPU fp32 runs on tensor cores in tf32.
TOL = {torch.float32: 2e-2 if GPU else 1e-4, torch.float16: 2e-2, torch.bfloat16: 4e-2}


@pytest.fixture
def no_autotune(monkeypatch):
    monkeypatch.setattr(launch, "AUTOTUNE", False)


def _close(got, want, dtype, what):
    got, want = got.float(), want.float()
    scale = want.abs().max().clamp(min=1.0)
    err = (got - want).abs().max() / scale
    assert err <= TOL[dtype], f"{what}: max error {err:.3g} relative to {scale:.3g}"


def _leaves(args, dtype, grads):
    out = {}
    for name, value in args.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            value = value.detach().to(dtype).requires_grad_(name in grads)
        out[name] = value
    return out


def check(op, ref, args, grads, dtype=torch.float32):
    """op(**args) with the triton backend vs ref(**args) in fp32: output and `grads`."""
    ours = _leaves(args, dtype, grads)
    with maskops.use_backend("triton"):
        y = op(**ours)
        y.backward(torch.linspace(-1, 1, y.numel(), device=y.device).reshape(y.shape).to(dtype))
    theirs = _leaves(args, torch.float32, grads)
    y_ref = ref(**theirs)
    y_ref.backward(torch.linspace(-1, 1, y.numel(), device=y.device).reshape(y.shape))
    assert y.dtype == dtype and y.shape == y_ref.shape
    _close(y, y_ref, dtype, "output")
    for name in grads:
        _close(ours[name].grad, theirs[name].grad, dtype, f"grad of {name}")
    return ours


def _owner(shape, tasks=3, device=DEVICE):
    owner = torch.randint(0, tasks + 1, shape, dtype=torch.uint8, device=device)
    owner.view(shape[0], -1)[:32, :32] = 1  # a tile everyone sees fully
    owner.view(shape[0], -1)[32:, :32] = 0  # a tile nobody sees
    return owner


def test_backend_claims():
    assert triton_backend.available()
    assert "triton" in maskops.available_backends()
    assert triton_backend.supports(torch.device("cuda"), torch.bfloat16)
    assert not triton_backend.supports(torch.device("cuda"), torch.float64)
    if not GPU:
        assert triton_backend.supports(torch.device("cpu"), torch.float16)
        assert not triton_backend.supports(torch.device("cpu"), torch.bfloat16)


# ----------------------------------------------------------------------------- linear

N, K = 40, 70  # two N-tiles and three K-tiles of the interpreter's 32x32 tiles


def _linear_args(rows=(2, 9), out_mask=None, bias=True):
    args = dict(x=torch.randn(*rows, K, device=DEVICE), weight=torch.randn(N, K, device=DEVICE),
                owner=_owner((N, K)), task=2, bias=torch.randn(N, device=DEVICE) if bias else None)
    if out_mask == "binary":
        args["out_mask"] = (torch.arange(N, device=DEVICE) % 3 != 0).float()
    elif out_mask == "per_sample":
        args["out_mask"] = torch.rand(rows[0], N, device=DEVICE)
    return args


@pytest.mark.parametrize("out_mask", [None, "binary", "per_sample"])
def test_task_linear(out_mask):
    args = _linear_args(out_mask=out_mask)
    grads = ["x", "weight", "bias"] + (["out_mask"] if out_mask else [])
    check(maskops.task_linear, reference.task_linear, args, grads)


def test_task_linear_fp16():
    check(maskops.task_linear, reference.task_linear, _linear_args(out_mask="binary"),
          ["x", "weight", "bias"], torch.float16)


def test_task_linear_per_sample_tasks_in_one_launch(monkeypatch, no_autotune):
    launches = []

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]
    kernel = matmul._gemm_kernel
    monkeypatch.setattr(matmul, "_gemm_kernel", Counting())
    args = _linear_args(rows=(6,), out_mask="per_sample")
    args["task"] = torch.tensor([1, 3, 2, 3, 1, 2], device=DEVICE)
    check(maskops.task_linear, reference.task_linear, args, ["x", "weight", "bias", "out_mask"])
    assert len(launches) == 3  # forward, input gradient, and the unmasked forward for out_mask's grad


def test_rows_are_grouped_into_single_task_tiles():
    task = torch.tensor([3, 1, 3, 3, 2, 1, 3, 3, 3, 3, 3, 1, 2], dtype=torch.int32, device=DEVICE)
    perm, table, count = groups.row_groups(task, maskops.route(task).order, 4)
    assert torch.equal(task[perm], task.sort(stable=True).values)
    used = int(count)
    assert used == 4 and table[:used].tolist() == [[0, 3, 1], [3, 5, 2], [5, 9, 3], [9, 13, 3]]
    assert (table[used:] == 0).all()


def test_autotune_key_sees_how_much_of_the_weight_a_task_uses():
    owner = torch.full((4, 4), 2, dtype=torch.uint8, device=DEVICE)
    owner[0] = 1  # task 1 sees a quarter of the 64x64 blocks, task 2 all of them
    owner = owner.repeat_interleave(64, 0).repeat_interleave(64, 1)
    assert masks.occupancy(Vis(Mode.visible, owner, None, 1), matmul.LINEAR) == 1
    assert masks.occupancy(Vis(Mode.visible, owner, None, 2), matmul.LINEAR) == 4
    assert masks.occupancy(Vis(Mode.trainable, owner, None, 2), matmul.LINEAR) == 3


def test_weight_gradient_is_exactly_zero_outside_trainable():
    args = _linear_args()
    leaves = check(maskops.task_linear, reference.task_linear, args, ["weight"])
    frozen = args["owner"] != args["task"]
    assert (leaves["weight"].grad[frozen] == 0).all()
    assert (leaves["weight"].grad[~frozen] != 0).any()


@pytest.mark.parametrize("kind", ["bool", "float", "trainable"])
def test_masked_linear(kind):
    mask = torch.rand(N, K, device=DEVICE)
    args = dict(x=torch.randn(5, K, device=DEVICE), weight=torch.randn(N, K, device=DEVICE),
                mask=mask if kind == "float" else mask > 0.5, bias=torch.randn(N, device=DEVICE))
    if kind == "trainable":
        args["trainable"] = torch.rand(N, K, device=DEVICE) > 0.3
    grads = ["x", "weight", "bias"] + (["mask"] if kind == "float" else [])
    check(maskops.masked_linear, reference.masked_linear, args, grads)


def test_bf16_is_computed_in_fp32_by_the_interpreter():
    x, w = torch.randn(6, K, device=DEVICE), torch.randn(N, K, device=DEVICE)
    vis = Vis(Mode.visible, _owner((N, K)), None, 2)
    got = triton_backend.linear_forward(x.bfloat16(), w.bfloat16(), vis, None, None)
    want = reference.task_linear(x.bfloat16().float(), w.bfloat16().float(), vis.owner, 2)
    assert got.dtype == torch.bfloat16
    _close(got, want, torch.bfloat16, "bf16 output")


CONFIGS = [  # (config, packed 1-bit map)
    (launch.Config(16, 32, 32), False),
    (launch.Config(16, 32, 32), True),
    (launch.Config(32, 32, 32, split_k=3), True),
    (launch.Config(16, 32, 64, split_k=2, swap_ab=True), False),
    (launch.Config(32, 64, 32, swap_ab=True), True),
]


@pytest.mark.parametrize("config,packed", CONFIGS)
def test_linear_kernel_configs(config, packed):
    args = _linear_args(rows=(20,), out_mask="binary")
    x, w, owner = args["x"], args["weight"], args["owner"]
    tasks = torch.randint(1, 4, (20,), dtype=torch.int32, device=DEVICE)
    g = torch.randn(20, N, device=DEVICE)
    routed = Vis(Mode.visible, owner).routed(maskops.route(tasks))
    for vis, task in [(Vis(Mode.visible, owner, None, 2), 2), (routed, tasks)]:
        x_ref = x.clone().requires_grad_()
        want = reference.task_linear(x_ref, w, owner, task, args["bias"], out_mask=args["out_mask"])
        want.backward(g)
        y = matmul.linear_forward(x, w, vis, args["bias"], args["out_mask"], config=config, packed=packed)
        _close(y, want, torch.float32, f"forward {config}")
        gx = matmul.linear_grad_input(g * args["out_mask"], w, vis, config=config)
        _close(gx, x_ref.grad, torch.float32, f"grad input {config}")
    if config.split_k > 1:  # arrival counters are left zeroed for the next launch
        assert not any(c.any() for c in matmul._counter_cache.values())


@pytest.mark.parametrize("vis_mode", ["visible", "mask"])
def test_materialized_weight_then_dense_library_call(vis_mode):
    # The autotuner's alternative for compute-bound shapes: mask the weight into a temporary
    # with a Triton kernel, then cuBLAS/cuDNN (here: torch on CPU).
    x, w, owner = torch.randn(9, K, device=DEVICE), torch.randn(N, K, device=DEVICE), _owner((N, K))
    mask = torch.rand(N, K, device=DEVICE)
    vis = Vis(Mode.visible, owner, None, 2) if vis_mode == "visible" else Vis(Mode.mask, None, mask)
    grad_vis = vis._replace(mode=Mode.trainable) if vis_mode == "visible" else vis
    w_eff = _effective(w, owner, 2) if vis_mode == "visible" else w * mask
    keep = reference.trainable(owner, 2) if vis_mode == "visible" else mask
    g = torch.randn(9, N, device=DEVICE)
    cfg = launch.MATERIALIZE
    _close(matmul.linear_forward(x, w, vis, config=cfg), x @ w_eff.t(), torch.float32, "forward")
    _close(matmul.linear_grad_input(g, w, vis, config=cfg), g @ w_eff, torch.float32, "grad input")
    _close(matmul.linear_grad_weight(g, x, grad_vis, config=cfg), (g.t() @ x) * keep, torch.float32,
           "grad weight")
    args = _conv_args("strided_groups")
    wc, oc = args["weight"], args["owner"]
    geometry = (args["stride"],) * 2, (args["padding"],) * 2, (args["dilation"],) * 2, args["groups"]
    cvis = Vis(Mode.visible, oc, None, 2)
    y = conv.conv2d_forward(args["x"], wc, cvis, None, None, *geometry, config=cfg)
    _close(y, reference.task_conv2d(args["x"], wc, oc, 2, None, *geometry), torch.float32, "conv")


def _effective(w, owner, task):
    return w * reference.visible(owner, task).to(w.dtype)


def test_invisible_tiles_are_never_read():
    # NaN in the weights of a tile no row of the first N-tile can see: a kernel that read it
    # would carry NaN into the output (as a masked load would, were it multiplied), one that
    # skips it does not.
    x, w = torch.randn(4, K, device=DEVICE), torch.randn(N, K, device=DEVICE)
    owner = torch.randint(1, 3, (N, K), dtype=torch.uint8, device=DEVICE)
    owner[:32, 32:64] = 3
    w[:32, 32:64] = float("nan")
    y = matmul.linear_forward(x, w, Vis(Mode.visible, owner, None, 2), config=launch.Config(16, 32, 32))
    assert torch.isfinite(y).all()
    _close(y, reference.task_linear(x, w.nan_to_num(0), owner, 2), torch.float32, "output")


def test_skipped_tiles_give_nan_for_rows_that_are_not_finite():
    """Where the kernel skips a tile (nothing visible, or out_mask zero), a row of x holding a
    NaN or an infinity still gives what dense math gives there: NaN (NaN * 0, inf * 0)."""
    x, w = torch.randn(4, K, device=DEVICE), torch.randn(N, K, device=DEVICE)
    owner = torch.randint(1, 3, (N, K), dtype=torch.uint8, device=DEVICE)
    owner[:32, 32:64] = 3
    x[0, 40], x[1, 0] = float("nan"), float("inf")
    out_mask = torch.ones(N, device=DEVICE)
    out_mask[32:] = 0
    for om in (None, out_mask):
        y = matmul.linear_forward(x, w, Vis(Mode.visible, owner, None, 2), None, om,
                                  config=launch.Config(16, 32, 32))
        want = reference.task_linear(x, w, owner, 2, out_mask=om)
        assert torch.equal(torch.isfinite(y), torch.isfinite(want))
        assert torch.equal(torch.isnan(y[0]), torch.isnan(want[0]))
        _close(y[2:], want[2:], torch.float32, "finite rows")


def test_zero_out_mask_tiles_are_skipped():
    x, w = torch.randn(4, K, device=DEVICE), torch.randn(N, K, device=DEVICE)
    w[:32] = float("nan")  # the skipped tiles never read these weights
    out_mask = torch.ones(N, device=DEVICE)
    out_mask[:32] = 0
    y = matmul.linear_forward(x, w, Vis(Mode.dense), None, out_mask, config=launch.Config(16, 32, 32))
    assert (y[:, :32] == 0).all() and torch.isfinite(y).all()
    _close(y, reference.masked_linear(x, w.nan_to_num(0), torch.ones_like(w), out_mask=out_mask),
           torch.float32, "output")


# ----------------------------------------------------------------------------- conv2d

CONV_CASES = {  # (batch, channels, h, w), (out channels, kernel), stride, padding, dilation, groups
    "3x3": ((2, 8, 7, 6), (12, (3, 3)), 1, 1, 1, 1),
    "strided_groups": ((2, 8, 9, 8), (12, (3, 3)), 2, 1, 1, 2),
    "dilated": ((1, 6, 8, 8), (6, (3, 3)), 1, 2, 2, 3),
    "rectangular": ((2, 5, 9, 7), (7, (3, 2)), (2, 1), (0, 1), (1, 2), 1),
    "pointwise": ((2, 4, 5, 5), (8, (1, 1)), 1, 0, 1, 1),
}


def _conv_args(case, channels_last=True, out_mask=None):
    x_shape, (cout, kernel), stride, padding, dilation, groups = CONV_CASES[case]
    x = torch.randn(x_shape, device=DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w_shape = (cout, x_shape[1] // groups) + kernel
    args = dict(x=x, weight=torch.randn(w_shape, device=DEVICE), owner=_owner(w_shape), task=2,
                bias=torch.randn(cout, device=DEVICE), stride=stride, padding=padding,
                dilation=dilation, groups=groups)
    if out_mask:
        args["out_mask"] = torch.rand(x_shape[0], cout, device=DEVICE)
    return args


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_task_conv2d(case):
    args = _conv_args(case, channels_last=case != "3x3", out_mask=case == "strided_groups")
    grads = ["x", "weight", "bias"] + (["out_mask"] if "out_mask" in args else [])
    with maskops.use_backend("triton"):
        y = maskops.task_conv2d(**_leaves(args, torch.float32, []))
    assert y.is_contiguous(memory_format=torch.channels_last) == (case != "3x3")
    check(maskops.task_conv2d, reference.task_conv2d, args, grads)


def test_task_conv2d_per_sample_tasks():
    args = _conv_args("strided_groups")
    args["task"] = torch.tensor([3, 1], device=DEVICE)
    check(maskops.task_conv2d, reference.task_conv2d, args, ["x", "weight", "bias"])


def test_masked_conv2d_float_mask():
    args = _conv_args("3x3")
    args["mask"] = torch.rand(args.pop("owner").shape, device=DEVICE)
    args.pop("task")
    check(maskops.masked_conv2d, reference.masked_conv2d, args, ["x", "weight", "mask", "bias"])


def test_task_conv2d_fp16():
    check(maskops.task_conv2d, reference.task_conv2d, _conv_args("dilated"), ["x", "weight", "bias"],
          torch.float16)


# ----------------------------------------------------------------------------- GPU, realistic shapes


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,rows,kind", [
    (torch.bfloat16, 16, "task"), (torch.bfloat16, 300, "task"), (torch.float16, 64, "per_sample"),
    (torch.float32, 200, "masked"), (torch.bfloat16, 8, "soft_mask")])
def test_gpu_linear(no_autotune, dtype, rows, kind):
    n, k = 1030, 1000
    args = dict(x=torch.randn(rows, k, device="cuda"), weight=torch.randn(n, k, device="cuda") / 30,
                bias=torch.randn(n, device="cuda"))
    if kind in ("task", "per_sample"):
        args.update(owner=torch.randint(0, 4, (n, k), dtype=torch.uint8, device="cuda"), task=2)
        if kind == "per_sample":
            args["task"] = torch.randint(1, 4, (rows,), device="cuda")
        op, ref = maskops.task_linear, reference.task_linear
    else:
        mask = torch.rand(n, k, device="cuda")
        args["mask"] = mask if kind == "soft_mask" else mask > 0.5
        op, ref = maskops.masked_linear, reference.masked_linear
    grads = ["x", "weight", "bias"] + (["mask"] if kind == "soft_mask" else [])
    check(op, ref, args, grads, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,per_sample", [(torch.bfloat16, False), (torch.float16, True)])
def test_gpu_conv(no_autotune, dtype, per_sample):
    x = torch.randn(4, 64, 14, 14, device="cuda").to(memory_format=torch.channels_last)
    args = dict(x=x, weight=torch.randn(128, 32, 3, 3, device="cuda") / 20,
                owner=torch.randint(0, 4, (128, 32, 3, 3), dtype=torch.uint8, device="cuda"),
                task=torch.tensor([1, 2, 3, 2], device="cuda") if per_sample else 2,
                bias=torch.randn(128, device="cuda"), stride=1, padding=1, groups=2)
    check(maskops.task_conv2d, reference.task_conv2d, args, ["x", "weight", "bias"], dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("config,packed", [(launch.Config(16, 64, 128, split_k=4), True),
                                           (launch.Config(16, 128, 128, swap_ab=True), False),
                                           (launch.Config(128, 128, 64, swap_ab=True, warps=8), True)])
def test_gpu_linear_configs(config, packed):
    x, w = torch.randn(16, 4096, device="cuda").bfloat16(), torch.randn(4096, 4096, device="cuda").bfloat16()
    owner = torch.randint(0, 3, w.shape, dtype=torch.uint8, device="cuda")
    y = matmul.linear_forward(x, w, Vis(Mode.visible, owner, None, 1), config=config, packed=packed)
    _close(y, reference.task_linear(x.float(), w.float(), owner, 1), torch.bfloat16, str(config))


@pytest.mark.gpu
def test_gpu_autotuned_linear():
    x, w = torch.randn(32, 2048, device="cuda").half(), torch.randn(1024, 2048, device="cuda").half()
    owner = torch.randint(0, 3, w.shape, dtype=torch.uint8, device="cuda")
    y = matmul.linear_forward(x, w, Vis(Mode.visible, owner, None, 2))
    assert launch._tuned  # the candidates were timed and the winner remembered
    _close(y, reference.task_linear(x.float(), w.float(), owner, 2), torch.float16, "autotuned")


def test_weight_over_2_31_elements():
    """Offsets into the weight and its owner are int64 (N * K > 2^31): the one visible weight
    row, the last, is found and used."""
    n, k = 32769, 65536
    x = torch.randn(2, k, device=DEVICE).half()
    w = torch.empty(n, k, dtype=torch.float16, device=DEVICE)  # pages untouched but the read ones
    owner = torch.zeros(n, k, dtype=torch.uint8, device=DEVICE)
    owner[-1, -32:] = 1
    w[-1, -32:] = torch.randn(32, device=DEVICE).half()
    with maskops.use_backend("triton"):
        y = maskops.task_linear(x, w, owner, torch.tensor([1, 1], device=DEVICE))
    expected = x[:, -32:].float() @ w[-1, -32:].float()
    assert torch.all(y[:, :-1] == 0)
    _close(y[:, -1], expected, torch.float16, "the visible row")
