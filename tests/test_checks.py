"""The argument checks (python/checks.cpp, and the task handling of maskops/ops.py and
maskops/routing.py): a property-based sweep of invalid arguments, on every backend.  Each must
raise TypeError, ValueError or RuntimeError naming the argument, before any kernel runs."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import maskops
from tests.helpers import op_backends, owner_map

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Each corruption: (name, the argument it names, ops it applies to, change(args) in place).
LINEAR, CONV = ("task_linear", "masked_linear"), ("task_conv2d", "masked_conv2d")
TASK_OPS, MASK_OPS, ALL = ("task_linear", "task_conv2d"), ("masked_linear", "masked_conv2d"), LINEAR + CONV


def _set(key, value):
    return lambda a: a.__setitem__(key, value(a) if callable(value) else value)


CORRUPTIONS = [
    ("x integer", "x", ALL, _set("x", lambda a: a["x"].long())),
    ("x not a tensor", "x", ALL, _set("x", "x")),
    ("weight dtype", "weight", ALL, _set("weight", lambda a: a["weight"].double())),
    ("weight not a tensor", "weight", ALL, _set("weight", [1.0])),
    ("weight on meta", "weight", ALL, _set("weight", lambda a: a["weight"].to("meta"))),
    ("weight rank", "weight", ALL, _set("weight", lambda a: a["weight"][..., None])),
    ("owner float", "owner", TASK_OPS, _set("owner", lambda a: a["owner"].float())),
    ("owner int32", "owner", TASK_OPS, _set("owner", lambda a: a["owner"].int())),
    ("owner shape", "owner", TASK_OPS, _set("owner", lambda a: a["owner"][:1])),
    ("owner on meta", "owner", TASK_OPS, _set("owner", lambda a: a["owner"].to("meta"))),
    ("owner missing", "owner", TASK_OPS, _set("owner", None)),
    ("task 0", "task", TASK_OPS, _set("task", 0)),
    ("task 256", "task", TASK_OPS, _set("task", 256)),
    ("task float", "task", TASK_OPS, _set("task", 1.5)),
    ("task bool", "task", TASK_OPS, _set("task", True)),
    ("task tensor length", "task", TASK_OPS, _set("task", lambda a: torch.ones(a["x"].shape[0] + 1, dtype=torch.long))),
    ("task tensor values", "task", TASK_OPS, _set("task", lambda a: torch.full((a["x"].shape[0],), 300))),
    ("task tensor float", "task", TASK_OPS, _set("task", lambda a: torch.ones(a["x"].shape[0]))),
    ("task tensor 2-D", "task", TASK_OPS, _set("task", lambda a: torch.ones(a["x"].shape[0], 2, dtype=torch.long))),
    ("mask shape", "mask", MASK_OPS, _set("mask", lambda a: a["mask"][:1])),
    ("mask int32", "mask", MASK_OPS, _set("mask", lambda a: a["mask"].int())),
    ("mask float64", "mask", MASK_OPS, _set("mask", lambda a: a["mask"].double())),
    ("mask on meta", "mask", MASK_OPS, _set("mask", lambda a: a["mask"].to("meta"))),
    ("trainable float", "trainable", MASK_OPS, _set("trainable", lambda a: a["mask"].float())),
    ("trainable shape", "trainable", MASK_OPS, _set("trainable", lambda a: a["mask"][:1])),
    ("trainable on meta", "trainable", MASK_OPS, _set("trainable", lambda a: a["mask"].to("meta"))),
    ("bias shape", "bias", ALL, _set("bias", lambda a: torch.randn(a["weight"].shape[0] + 1))),
    ("bias dtype", "bias", ALL, _set("bias", lambda a: torch.randn(a["weight"].shape[0]).double())),
    ("bias on meta", "bias", ALL, _set("bias", lambda a: torch.randn(a["weight"].shape[0], device="meta"))),
    ("bias not a tensor", "bias", ALL, _set("bias", 3.0)),
    ("out_mask shape", "out_mask", ALL, _set("out_mask", lambda a: torch.ones(a["weight"].shape[0] + 2))),
    ("out_mask int64", "out_mask", ALL, _set("out_mask", lambda a: torch.ones(a["weight"].shape[0], dtype=torch.long))),
    ("out_mask dtype", "out_mask", ALL, _set("out_mask", lambda a: torch.ones(a["weight"].shape[0]).double())),
    ("out_mask on meta", "out_mask", ALL, _set("out_mask", lambda a: torch.ones(a["weight"].shape[0], device="meta"))),
    ("in_features", "in_features", LINEAR, _set("x", lambda a: torch.randn(3, a["weight"].shape[1] + 1))),
    ("channels", "channels", CONV, _set("x", lambda a: torch.randn(2, a["x"].shape[1] + 1, 6, 6))),
    ("groups 0", "groups", CONV, _set("groups", 0)),
    ("groups not dividing", "groups", CONV, _set("groups", 5)),
    ("stride 0", "stride", CONV, _set("stride", 0)),
    ("stride triple", "stride", CONV, _set("stride", (1, 1, 1))),
    ("padding negative", "padding", CONV, _set("padding", -1)),
    ("padding word", "padding", CONV, _set("padding", "full")),
    ("dilation 0", "dilation", CONV, _set("dilation", (1, 0))),
    ("input smaller than kernel", "kernel", CONV,
     lambda a: a.update(x=torch.randn(2, a["x"].shape[1], 2, 2), padding=0)),
    ("zero-size kernel", "kernel", CONV, _set("weight", lambda a: torch.randn(6, a["weight"].shape[1], 0, 3))),
]


def _valid(op: str) -> dict:
    if op in LINEAR:
        x, w = torch.randn(3, 5), torch.randn(4, 5)
    else:
        x, w = torch.randn(2, 4, 6, 6), torch.randn(6, 2, 3, 3)
    args = dict(x=x, weight=w, bias=None, out_mask=None, stride=1, padding=1, dilation=1, groups=2)
    if op in TASK_OPS:
        args.update(owner=owner_map(w.shape), task=1)
    else:
        args.update(mask=owner_map(w.shape) > 1, trainable=None)
    return args


def _call(op: str, a: dict):
    fn = getattr(maskops, op)
    selection = (a["owner"], a["task"]) if op in TASK_OPS else (a["mask"],)
    keywords = dict(out_mask=a["out_mask"])
    if op in MASK_OPS:
        keywords["trainable"] = a["trainable"]
    if op in LINEAR:
        return fn(a["x"], a["weight"], *selection, a["bias"], **keywords)
    return fn(a["x"], a["weight"], *selection, a["bias"], a["stride"], a["padding"], a["dilation"],
              a["groups"], **keywords)


@pytest.mark.parametrize("op", ALL)
def test_the_valid_calls_run(op):
    for backend in op_backends():
        with maskops.use_backend(backend):
            assert _call(op, _valid(op)).dtype == torch.float32


@SETTINGS
@given(data=st.data())
def test_bad_arguments_raise_errors_that_name_them(data):
    name, argument, ops, change = data.draw(st.sampled_from(CORRUPTIONS), label="corruption")
    op = data.draw(st.sampled_from(ops), label="op")
    backend = data.draw(st.sampled_from(op_backends()), label="backend")
    args = _valid(op)
    change(args)
    with maskops.use_backend(backend), pytest.raises((TypeError, ValueError, RuntimeError)) as error:
        _call(op, args)
    assert argument in str(error.value), f"{name}: {error.value}"
