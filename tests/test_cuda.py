"""The hand-written CUDA backend ('cuda') against the torch backend, kernel by kernel, on a GPU.

Shapes cover the tensor-core kernels (forward over few rows, split K, batches that mix
tasks) and the paths that run cuBLAS/cuDNN on a masked copy of the weight (many rows of one
task, float32, rows not a multiple of 8, convolutions).
"""
from __future__ import annotations

import pytest
import torch

import maskops
from maskops import backends, reference
from maskops.backends import Vis, torch_backend
from tests.helpers import TOLERANCE, owner_map

pytestmark = pytest.mark.gpu

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# (M, N, K): one row; few rows with odd N; tiles; split K; rows of 13 (no 16-byte loads).
LINEAR_SHAPES = [(1, 72, 104), (16, 130, 264), (200, 136, 328), (40, 64, 2048), (5, 33, 13)]
MODES = ["dense", "visible", "trainable", "mask", "soft"]


@pytest.fixture(autouse=True)
def _full_fp32():
    """float32 is compared at 1e-4: keep cuDNN and cuBLAS off TF32 on both sides."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(scope="module")
def cuda():
    backend = backends.get("cuda")
    assert backend.available(), "maskops._C was built without its CUDA kernels"
    return backend


def make_vis(mode: str, weight_shape, dtype, rows: int = 0, mixed: bool = False) -> Vis:
    if mode == "soft":
        return Vis("mask", mask=torch.rand(weight_shape, device="cuda").to(dtype))
    if mode == "mask":
        return Vis("mask", mask=(torch.rand(weight_shape, device="cuda") > 0.5).to(torch.uint8))
    owner = owner_map(weight_shape).cuda()
    row_task = torch.randint(1, 4, (rows,), dtype=torch.int32, device="cuda") if mixed else None
    return Vis(mode, owner=owner, task=2, row_task=row_task)


def randn(*shape, dtype):
    return torch.randn(*shape, device="cuda").to(dtype)


def check(actual, expected, dtype):
    torch.testing.assert_close(actual, expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
@pytest.mark.parametrize("mode", MODES)
def test_linear_forward(cuda, dtype, shape, mode):
    M, N, K = shape
    x, w, bias = randn(M, K, dtype=dtype), randn(N, K, dtype=dtype), randn(N, dtype=dtype)
    out_mask = torch.rand(N, device="cuda").to(dtype)
    vis = make_vis(mode, (N, K), dtype)
    check(cuda.linear_forward(x, w, vis, bias, out_mask),
          torch_backend.linear_forward(x, w, vis, bias, out_mask), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [7, 64, 300])
def test_linear_forward_mixed_tasks(cuda, dtype, M):
    N, K = 96, 200
    x, w = randn(M, K, dtype=dtype), randn(N, K, dtype=dtype)
    out_mask = (torch.rand(M, N, device="cuda") > 0.3).to(dtype)
    vis = make_vis("visible", (N, K), dtype, rows=M, mixed=True)
    check(cuda.linear_forward(x, w, vis, None, out_mask),
          torch_backend.linear_forward(x, w, vis, None, out_mask), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(16, 136, 264), (300, 64, 96), (3, 40, 50)])
def test_linear_forward_bits(cuda, dtype, shape):
    from maskops.plan import pack_visible
    M, N, K = shape
    x, w = randn(M, K, dtype=dtype), randn(N, K, dtype=dtype)
    owner = owner_map((N, K)).cuda()
    got = torch.ops.maskops.native_linear_forward_bits(x, w, pack_visible(owner, 2), None, None)
    check(got, torch_backend.linear_forward(x, w, Vis("visible", owner=owner, task=2), None, None), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 72, 104), (130, 200, 136), (90, 4096, 64), (6, 20, 12)])
@pytest.mark.parametrize("mode,mixed", [("visible", False), ("trainable", False), ("mask", False),
                                        ("soft", False), ("visible", True), ("trainable", True)])
def test_linear_grad_input(cuda, dtype, shape, mode, mixed):
    M, N, K = shape
    g, w = randn(M, N, dtype=dtype), randn(N, K, dtype=dtype)
    vis = make_vis(mode, (N, K), dtype, rows=M, mixed=mixed)
    check(cuda.linear_grad_input(g, w, vis), torch_backend.linear_grad_input(g, w, vis), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 72, 104), (300, 136, 200), (600, 256, 520), (9, 20, 12)])
@pytest.mark.parametrize("mode", ["dense", "trainable", "mask", "soft", "mixed"])
def test_linear_grad_weight(cuda, dtype, shape, mode):
    M, N, K = shape
    g, x = randn(M, N, dtype=dtype), randn(M, K, dtype=dtype)
    vis = make_vis("trainable" if mode == "mixed" else mode, (N, K), dtype, rows=M, mixed=mode == "mixed")
    got = cuda.linear_grad_weight(g, x, vis)
    check(got, torch_backend.linear_grad_weight(g, x, vis), dtype)
    if vis.mode == "trainable":  # frozen and pruned weights get exactly zero
        tasks = vis.row_task.unique() if vis.row_task is not None else torch.tensor([vis.task])
        trained = torch.zeros_like(vis.owner, dtype=torch.bool)
        for t in tasks.tolist():
            trained |= reference.trainable(vis.owner, t)
        assert (got[~trained] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["visible", "trainable", "mask", "soft"])
def test_mask_weight(cuda, dtype, mode):
    w = randn(24, 40, dtype=dtype)
    vis = make_vis(mode, w.shape, dtype)
    mode_id = {"visible": 1, "trainable": 2, "mask": 3}[vis.mode]
    got = torch.ops.maskops.native_mask_weight(w, mode_id, vis.owner, vis.mask, vis.task)
    torch.testing.assert_close(got, torch_backend.effective_weight(w, vis, vis.task), rtol=0, atol=0)


# (B, C, H, W, Cout, kernel, stride, padding, dilation, groups)
CONV_GEOMETRY = [
    (2, 8, 9, 7, 16, 3, (1, 1), (1, 1), (1, 1), 1),
    (3, 6, 11, 10, 9, (3, 2), (2, 1), (0, 2), (2, 1), 3),
    (4, 16, 8, 8, 16, 3, (1, 1), (1, 1), (1, 1), 16),  # depthwise
]


def _conv_problem(geometry, dtype, channels_last, mode, mixed):
    B, C, H, W, Cout, kernel, stride, padding, dilation, groups = geometry
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = randn(B, C, H, W, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = randn(Cout, C // groups, kh, kw, dtype=dtype)
    vis = make_vis(mode, w.shape, dtype, rows=B, mixed=mixed)
    return x, w, vis, (stride, padding, dilation, groups)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", CONV_GEOMETRY)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mixed", [False, True])
def test_conv2d(cuda, dtype, geometry, channels_last, mixed):
    x, w, vis, conv = _conv_problem(geometry, dtype, channels_last, "visible", mixed)
    bias = randn(w.shape[0], dtype=dtype)
    out_mask = torch.rand(x.shape[0], w.shape[0], device="cuda").to(dtype)
    y = cuda.conv2d_forward(x, w, vis, bias, out_mask, *conv)
    check(y, torch_backend.conv2d_forward(x, w, vis, bias, out_mask, *conv), dtype)
    g = torch.randn_like(y)
    check(cuda.conv2d_grad_input(g, w, vis, x.shape, *conv),
          torch_backend.conv2d_grad_input(g, w, vis, x.shape, *conv), dtype)
    tvis = vis._replace(mode="trainable")
    check(cuda.conv2d_grad_weight(g, x, tvis, w.shape, *conv),
          torch_backend.conv2d_grad_weight(g, x, tvis, w.shape, *conv), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_task_linear_end_to_end(cuda, dtype):
    """The public op with per-sample tasks, forward and backward, through the cuda backend."""
    x = randn(6, 5, 64, dtype=dtype).requires_grad_()
    w = randn(48, 64, dtype=dtype).requires_grad_()
    owner = owner_map((48, 64)).cuda()
    task = torch.tensor([1, 2, 3, 2, 1, 3], device="cuda")
    with maskops.use_backend("cuda"):
        y = maskops.task_linear(x, w, owner, task)
    y_ref = reference.task_linear(x, w, owner, task)
    check(y, y_ref, dtype)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, w), g)
    want = torch.autograd.grad(y_ref, (x, w), g)
    for a, e in zip(got, want):
        check(a, e, dtype)


def test_opcheck_cuda_native_ops(cuda):
    from maskops.plan import pack_visible
    x, w = randn(16, 96, dtype=torch.bfloat16), randn(40, 96, dtype=torch.bfloat16)
    owner = owner_map((40, 96)).cuda()
    rows = torch.randint(1, 4, (16,), dtype=torch.int32, device="cuda")
    xc, wc = randn(2, 8, 6, 6, dtype=torch.float16), randn(8, 4, 3, 3, dtype=torch.float16)
    oc = owner_map(wc.shape).cuda()
    geo = ([1, 1], [1, 1], [1, 1], 2)
    ops = torch.ops.maskops
    samples = [
        (ops.native_linear_forward_bits.default, (x, w, pack_visible(owner, 2), None, None)),
        (ops.native_mask_weight.default, (w, 1, owner, None, 2)),
        (ops.native_linear_forward.default, (x, w, 1, owner, None, 0, rows, None, None)),
        (ops.native_linear_grad_input.default, (randn(16, 40, dtype=torch.bfloat16), w, 1, owner, None, 2, None)),
        (ops.native_linear_grad_weight.default, (randn(16, 40, dtype=torch.bfloat16), x, 2, owner, None, 0, rows)),
        (ops.native_conv2d_forward.default, (xc, wc, 1, oc, None, 2, None, None, None, *geo)),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args)


def test_forward_through_the_bit_map_matches_reference(cuda):
    x, w = randn(16, 4096, dtype=torch.bfloat16), randn(512, 4096, dtype=torch.bfloat16)
    owner = owner_map(w.shape).cuda()
    with maskops.use_backend("cuda"):
        got = maskops.task_linear(x, w, owner, 2)
        before = owner.clone()
        owner[:, :64] = 3  # an in-place change must rebuild the cached map
        again = maskops.task_linear(x, w, owner, 2)
    check(got.float(), reference.task_linear(x.float(), w.float(), before, 2), torch.bfloat16)
    check(again.float(), reference.task_linear(x.float(), w.float(), owner, 2), torch.bfloat16)
