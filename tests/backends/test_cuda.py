"""The hand-written CUDA backend ('cuda': csrc/cuda through python/cuda_ops.cpp) against the
torch backend, op by op, on a GPU.

Shapes cover the tensor-core kernels (forward over few rows with the 1-bit map, split K,
batches that mix tasks) and the paths that run cuBLAS/cuDNN on a masked copy of the weight
(many rows of one task, float32, rows not a multiple of 8, convolutions).
"""
from __future__ import annotations

import pytest
import torch

import maskops
from maskops import _C, backends, reference
from maskops.modes import Mode
from tests.helpers import TOLERANCE, owner_map

pytestmark = pytest.mark.gpu

ops = torch.ops.maskops
CUDA, TORCH = backends.IDS["cuda"], backends.IDS["torch"]
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# (M, N, K): one row; few rows with odd N; tiles; split K; rows of 13 (no 16-byte loads).
LINEAR_SHAPES = [(1, 72, 104), (16, 130, 264), (200, 136, 328), (40, 64, 2048), (5, 33, 13)]
NONE = (None, None, None)


@pytest.fixture(autouse=True)
def _full_fp32():
    """float32 is compared at 1e-4: keep cuDNN and cuBLAS off TF32 on both sides."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(scope="module", autouse=True)
def _built_with_cuda():
    assert backends.available("cuda"), "maskops._C was built without its CUDA kernels"


def randn(*shape, dtype):
    return torch.randn(*shape, device="cuda").to(dtype)


def check(actual, expected, dtype):
    torch.testing.assert_close(actual, expected, **TOLERANCE[dtype])


def selection(mode: str, weight_shape, dtype, rows: int = 0, mixed: bool = False) -> tuple:
    """(mode, owner, mask, task, tasks, order, offsets) arguments of a backward op."""
    if mode == "soft":
        return int(Mode.mask), None, torch.rand(weight_shape, device="cuda").to(dtype), 1, *NONE
    if mode == "mask":
        mask = (torch.rand(weight_shape, device="cuda") > 0.5).to(torch.uint8)
        return int(Mode.mask), None, mask, 1, *NONE
    if mode == "dense":
        return int(Mode.dense), None, None, 1, *NONE
    routing = maskops.route(torch.randint(1, 4, (rows,)), "cuda") if mixed else NONE
    return int(Mode[mode]), owner_map(weight_shape).cuda(), None, 2, *routing


def both(op, *args):
    """op(*args) on the cuda backend and on the torch backend."""
    return op(*args, CUDA), op(*args, TORCH)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
@pytest.mark.parametrize("mode", ["visible", "mask", "soft"])
def test_linear_forward(dtype, shape, mode):
    M, N, K = shape
    x, w, bias = randn(M, K, dtype=dtype), randn(N, K, dtype=dtype), randn(N, dtype=dtype)
    out_mask = torch.rand(N, device="cuda").to(dtype)
    sel = selection(mode, (N, K), dtype)
    if mode == "visible":
        got, want = both(ops.task_linear, x, w, sel[1], 2, *NONE, bias, out_mask)
    else:
        got, want = both(ops.masked_linear, x, w, sel[2], None, bias, out_mask)
    check(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [7, 64, 300])
def test_linear_forward_mixed_tasks(dtype, M):
    N, K = 96, 200
    x, w = randn(M, K, dtype=dtype), randn(N, K, dtype=dtype)
    out_mask = (torch.rand(M, N, device="cuda") > 0.3).to(dtype)
    routing = maskops.route(torch.randint(1, 4, (M,)), "cuda")
    check(*both(ops.task_linear, x, w, owner_map((N, K)).cuda(), 0, *routing, None, out_mask), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(16, 136, 264), (3, 40, 50)])
def test_forward_through_the_bit_map(dtype, shape):
    """Up to 64 rows of one task read the task's 1-bit map, built once per owner version."""
    M, N, K = shape
    x, w = randn(M, K, dtype=dtype), randn(N, K, dtype=dtype)
    owner = owner_map((N, K)).cuda()
    got = ops.task_linear(x, w, owner, 2, *NONE, None, None, CUDA)
    check(got, reference.task_linear(x.float(), w.float(), owner, 2).to(dtype), dtype)
    owner[:, :16] = 3  # an in-place change must rebuild the cached map
    again = ops.task_linear(x, w, owner, 2, *NONE, None, None, CUDA)
    check(again, reference.task_linear(x.float(), w.float(), owner, 2).to(dtype), dtype)
    bits = _C.cached_visible_bits(owner, 2)
    assert bits is _C.cached_visible_bits(owner, 2) or torch.equal(bits, _C.cached_visible_bits(owner, 2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 72, 104), (130, 200, 136), (90, 4096, 64), (6, 20, 12)])
@pytest.mark.parametrize("mode,mixed", [("visible", False), ("trainable", False), ("mask", False),
                                        ("soft", False), ("visible", True), ("trainable", True)])
def test_linear_grad_input(dtype, shape, mode, mixed):
    M, N, K = shape
    g, w = randn(M, N, dtype=dtype), randn(N, K, dtype=dtype)
    check(*both(ops.linear_grad_input, g, w, *selection(mode, (N, K), dtype, M, mixed)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 72, 104), (300, 136, 200), (600, 256, 520), (9, 20, 12)])
@pytest.mark.parametrize("mode", ["dense", "trainable", "mask", "soft", "mixed"])
def test_linear_grad_weight(dtype, shape, mode):
    M, N, K = shape
    g, x = randn(M, N, dtype=dtype), randn(M, K, dtype=dtype)
    sel = selection("trainable" if mode == "mixed" else mode, (N, K), dtype, M, mode == "mixed")
    got, want = both(ops.linear_grad_weight, g, x, *sel)
    check(got, want, dtype)
    if sel[0] == Mode.trainable:  # frozen and pruned weights get exactly zero
        owner, routing = sel[1], sel[4:]
        tasks = routing[0].unique().tolist() if routing[0] is not None else [2]
        trained = torch.zeros_like(owner, dtype=torch.bool)
        for t in tasks:
            trained |= reference.trainable(owner, t)
        assert (got[~trained] == 0).all()


# (B, C, H, W, Cout, kernel, stride, padding, dilation, groups)
CONV_GEOMETRY = [
    (2, 8, 9, 7, 16, 3, (1, 1), (1, 1), (1, 1), 1),
    (3, 6, 11, 10, 9, (3, 2), (2, 1), (0, 2), (2, 1), 3),
    (4, 16, 8, 8, 16, 3, (1, 1), (1, 1), (1, 1), 16),  # depthwise
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", CONV_GEOMETRY)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mixed", [False, True])
def test_conv2d(dtype, geometry, channels_last, mixed):
    B, C, H, W, Cout, kernel, stride, padding, dilation, groups = geometry
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = randn(B, C, H, W, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = randn(Cout, C // groups, kh, kw, dtype=dtype)
    sel = selection("visible", w.shape, dtype, B, mixed)
    conv = (list(stride), list(padding), list(dilation), groups)
    bias = randn(Cout, dtype=dtype)
    out_mask = torch.rand(B, Cout, device="cuda").to(dtype)
    y, want = both(ops.task_conv2d, x, w, sel[1], sel[3], *sel[4:], bias, out_mask, *conv)
    check(y, want, dtype)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    g = torch.randn_like(y)
    check(*both(ops.conv2d_grad_input, g, w, *sel, list(x.shape), *conv), dtype)
    trainable = (int(Mode.trainable),) + sel[1:]
    check(*both(ops.conv2d_grad_weight, g, x, *trainable, list(w.shape), *conv), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_task_linear_end_to_end(dtype):
    """The public op with per-sample tasks, forward and backward, through the cuda backend."""
    x = randn(6, 5, 64, dtype=dtype).requires_grad_()
    w = randn(48, 64, dtype=dtype).requires_grad_()
    owner = owner_map((48, 64)).cuda()
    task = torch.tensor([1, 2, 3, 2, 1, 3])
    with maskops.use_backend("cuda"):
        y = maskops.task_linear(x, w, owner, maskops.route(task, "cuda"))
    y_ref = reference.task_linear(x, w, owner, task.cuda())
    check(y, y_ref, dtype)
    g = torch.randn_like(y)
    for a, e in zip(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(y_ref, (x, w), g)):
        check(a, e, dtype)


def test_opcheck_on_cuda_tensors():
    x, w = randn(16, 96, dtype=torch.bfloat16), randn(40, 96, dtype=torch.bfloat16)
    owner = owner_map((40, 96)).cuda()
    routing = maskops.route(torch.randint(1, 4, (16,)), "cuda")
    xc, wc = randn(2, 8, 6, 6, dtype=torch.float16), randn(8, 4, 3, 3, dtype=torch.float16)
    geometry = ([1, 1], [1, 1], [1, 1], 2)
    samples = [
        (ops.task_linear.default, (x, w, owner, 2, *NONE, None, None, CUDA)),
        (ops.task_linear.default, (x, w, owner, 0, *routing, None, None, CUDA)),
        (ops.linear_grad_input.default, (randn(16, 40, dtype=torch.bfloat16), w, int(Mode.visible),
                                         owner, None, 2, *NONE, CUDA)),
        (ops.linear_grad_weight.default, (randn(16, 40, dtype=torch.bfloat16), x, int(Mode.trainable),
                                          owner, None, 0, *routing, CUDA)),
        (ops.task_conv2d.default, (xc, wc, owner_map(wc.shape).cuda(), 2, *NONE, None, None,
                                   *geometry, CUDA)),
        (ops.pack_visible.default, (owner, 2)),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args)


def test_mixed_task_forward_is_captured_in_a_cuda_graph():
    """A routed forward reads nothing on the host, so it can be captured and replayed."""
    w = randn(64, 96, dtype=torch.bfloat16)
    owner = owner_map(w.shape).cuda()
    x = randn(8, 96, dtype=torch.bfloat16)
    routing = maskops.route(torch.tensor([1, 2, 3, 1, 2, 3, 3, 1]), "cuda")
    with maskops.use_backend("cuda"):
        eager = maskops.task_linear(x, w, owner, routing)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            maskops.task_linear(x, w, owner, routing)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = maskops.task_linear(x, w, owner, routing)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, eager)
