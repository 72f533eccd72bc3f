"""Bad input raises a clear error naming the argument, before any kernel runs."""
import pytest
import torch

import maskops
from tests.helpers import cpu_backends

X, W = torch.randn(3, 5), torch.randn(4, 5)
OWNER = torch.ones(4, 5, dtype=torch.uint8)
XC, WC = torch.randn(2, 4, 6, 6), torch.randn(6, 2, 3, 3)
OWNERC = torch.ones(6, 2, 3, 3, dtype=torch.uint8)

LINEAR_CASES = [
    (dict(x=X.long()), TypeError, "x must be a floating"),
    (dict(weight=W.double()), TypeError, "weight has dtype"),
    (dict(weight=torch.randn(4, 6)), ValueError, "in_features"),
    (dict(weight=torch.randn(4, 5, 1)), ValueError, "weight must be 2-D"),
    (dict(owner=OWNER.bool()), TypeError, "owner must be a torch.uint8"),
    (dict(owner=OWNER.float()), TypeError, "owner must be a torch.uint8"),
    (dict(owner=torch.ones(4, 4, dtype=torch.uint8)), ValueError, "owner has shape"),
    (dict(task=0), ValueError, "task must be in 1..255"),
    (dict(task=256), ValueError, "task must be in 1..255"),
    (dict(task=1.5), TypeError, "task must be an int"),
    (dict(task=torch.tensor([1, 2])), ValueError, "task tensor must have shape"),
    (dict(task=torch.tensor([1, 2, 300])), ValueError, "task values must be in 1..255"),
    (dict(task=torch.tensor([1.0, 2.0, 3.0])), TypeError, "integer dtype"),
    (dict(bias=torch.randn(5)), ValueError, "bias must have shape"),
    (dict(bias=torch.randn(4).double()), TypeError, "bias has dtype"),
    (dict(out_mask=torch.ones(5)), ValueError, "out_mask must have shape"),
    (dict(out_mask=torch.ones(2, 4)), ValueError, "out_mask must have shape"),
    (dict(out_mask=torch.ones(4, dtype=torch.int64)), TypeError, "out_mask must be bool"),
    (dict(weight="w"), TypeError, "weight must be a torch.Tensor"),
    (dict(owner=None), TypeError, "owner must be a torch.Tensor"),
    (dict(x=torch.randn(3, 5, device="meta")), RuntimeError, "weight is on"),
]


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("change, error, message", LINEAR_CASES)
def test_task_linear_rejects(backend, change, error, message):
    args = dict(x=X, weight=W, owner=OWNER, task=1, bias=None, out_mask=None)
    args.update(change)
    with maskops.use_backend(backend), pytest.raises(error, match=message):
        maskops.task_linear(args["x"], args["weight"], args["owner"], args["task"], args["bias"],
                            out_mask=args["out_mask"])


MASK_CASES = [
    (dict(mask=torch.ones(4, 4)), ValueError, "mask has shape"),
    (dict(mask=torch.ones(4, 5, dtype=torch.int32)), TypeError, "mask must be bool, uint8"),
    (dict(mask=torch.ones(4, 5, dtype=torch.float64)), TypeError, "floating mask has dtype"),
    (dict(trainable=torch.ones(3, 5, dtype=torch.bool)), ValueError, "trainable has shape"),
]


@pytest.mark.parametrize("change, error, message", MASK_CASES)
def test_masked_linear_rejects(change, error, message):
    args = dict(mask=torch.ones(4, 5, dtype=torch.bool), trainable=None)
    args.update(change)
    with pytest.raises(error, match=message):
        maskops.masked_linear(X, W, args["mask"], trainable=args["trainable"])


CONV_CASES = [
    (dict(x=torch.randn(2, 5, 6, 6)), ValueError, "channels but weight expects"),
    (dict(groups=4), ValueError, "divisible by groups"),
    (dict(groups=0), ValueError, "groups must be a positive int"),
    (dict(stride=0), ValueError, "stride must be an int >= 1"),
    (dict(padding=-1), ValueError, "padding must be an int >= 0"),
    (dict(padding="full"), ValueError, "padding must be an int, a pair"),
    (dict(padding="same", stride=2), ValueError, "strided"),
    (dict(dilation=(1, 0)), ValueError, "dilation must be"),
    (dict(x=torch.randn(2, 4, 2, 2), padding=0), ValueError, "smaller than the dilated kernel"),
    (dict(weight=torch.randn(6, 2, 3)), ValueError, "weight must be 4-D"),
    (dict(owner=torch.ones(6, 2, 3, 3)), TypeError, "owner must be a torch.uint8"),
    (dict(task=torch.tensor([1])), ValueError, "task tensor must have shape"),
    (dict(out_mask=torch.ones(3, 6)), ValueError, "out_mask must have shape"),
]


@pytest.mark.parametrize("change, error, message", CONV_CASES)
def test_task_conv2d_rejects(change, error, message):
    args = dict(x=XC, weight=WC, owner=OWNERC, task=1, stride=1, padding=1, dilation=1, groups=2,
                out_mask=None)
    args.update(change)
    with pytest.raises(error, match=message):
        maskops.task_conv2d(args["x"], args["weight"], args["owner"], args["task"], None,
                            args["stride"], args["padding"], args["dilation"], args["groups"],
                            out_mask=args["out_mask"])


def test_unknown_or_unavailable_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        with maskops.use_backend("tpu"):
            pass
    if "cuda" not in maskops.available_backends():
        with pytest.raises(RuntimeError, match="not available"):
            with maskops.use_backend("cuda"):
                pass


def test_backend_without_dtype_support_says_so():
    if "cpu" not in maskops.available_backends():
        pytest.skip("the cpu backend is not built")
    fp8 = torch.float8_e4m3fn
    with maskops.use_backend("cpu"), pytest.raises(RuntimeError, match="does not support"):
        maskops.task_linear(X.to(fp8), W.to(fp8), OWNER, 1)
