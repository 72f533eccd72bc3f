"""maskops.convert on the layers real models contain: subclasses, weight transforms, attention."""
import copy
import math
import warnings

import pytest
import torch
from torch import nn
import torch.nn.functional as F

import maskops
from maskops import reference
from maskops.conversion import WeightTransformingLayer
from tests.helpers import assert_first_task_kept


class StdConv2d(nn.Conv2d):
    """Weight standardization in forward, as timm's StdConv2d (BiT)."""

    def __init__(self, *args, eps=1e-6, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x):
        weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                              training=True, momentum=0.0, eps=self.eps).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2dSame(nn.Conv2d):
    """TensorFlow 'SAME' padding computed from the input in forward, as timm's Conv2dSame."""

    def forward(self, x):
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads = [total // 2, total - total // 2] + pads
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class CastingLinear(nn.Linear):
    """Overrides forward with the plain computation (as timm's Linear does for TorchScript)."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class PlainSubclass(nn.Linear):
    pass


def _owner(shape, generator, tasks=3):
    return torch.randint(0, tasks + 1, shape, generator=generator, dtype=torch.uint8)


def _net():
    return nn.Sequential(StdConv2d(3, 8, 3, padding=1), nn.ReLU(), Conv2dSame(8, 8, 3, stride=2),
                         nn.Flatten(), PlainSubclass(8 * 4 * 4, 16), nn.ReLU(), CastingLinear(16, 5))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_subclasses_convert_with_unchanged_outputs(backend):
    torch.manual_seed(0)
    model, x = _net(), torch.randn(2, 3, 8, 8)
    expected = model(x)
    classes = [type(m) for m in model]
    assert maskops.convert(model) is model
    for module, cls in zip(model, classes):
        assert isinstance(module, cls)
        if cls in (StdConv2d, Conv2dSame, PlainSubclass, CastingLinear):
            assert isinstance(module, maskops.nn.TaskMaskedLayer) and type(module).plain_class is cls
    assert isinstance(model[4], maskops.nn.MaskedLinear)  # plain forward: the masked layer's own
    assert isinstance(model[0], WeightTransformingLayer) and isinstance(model[2], WeightTransformingLayer)
    with maskops.use_backend(backend):
        torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_weight_transform_sees_only_the_visible_weights(backend):
    """A task's output: the transform of weight * visible, masked again where the transform
    filled hidden places; the weight gradient is exactly zero outside the task's weights."""
    g = torch.Generator().manual_seed(1)
    layer = StdConv2d(4, 6, 3, padding=1, dtype=torch.float64)
    x = torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64)
    owner = _owner(layer.weight.shape, g)
    plain = copy.deepcopy(layer)
    maskops.convert(layer)
    layer.owner.copy_(owner)
    layer.task = 2
    with maskops.use_backend(backend):
        y = layer(x)
    visible = reference.visible(owner, 2).to(torch.float64)
    with torch.no_grad():
        plain.weight.mul_(visible)
    standardized = F.batch_norm(plain.weight.reshape(1, 6, -1), None, None, training=True, momentum=0.0,
                                eps=plain.eps).reshape_as(plain.weight)
    expected = F.conv2d(x, standardized * visible, plain.bias, padding=1)
    torch.testing.assert_close(y, expected)
    y.sum().backward()
    assert torch.all(layer.weight.grad[visible == 0] == 0) and layer.weight.grad.abs().sum() > 0
    # Later tasks' weights do not move task 2's output.
    with torch.no_grad():
        layer.weight[owner > 2] += 1.0
    with maskops.use_backend(backend):
        torch.testing.assert_close(layer(x), y.detach())


def test_conv2d_same_masks_its_weight():
    g = torch.Generator().manual_seed(2)
    layer = Conv2dSame(3, 4, 3, stride=2)
    x = torch.randn(1, 3, 7, 6, generator=g)
    plain = copy.deepcopy(layer)
    maskops.convert(layer)
    layer.owner.copy_(_owner(layer.weight.shape, g))
    layer.task = 1
    with torch.no_grad():
        plain.weight.mul_(reference.visible(layer.owner, 1))
    torch.testing.assert_close(layer(x), plain(x))


def test_weight_transforming_layer_refuses_per_sample_tasks():
    layer = maskops.convert(StdConv2d(3, 4, 3))
    layer.task = torch.tensor([1, 2])
    with pytest.raises(NotImplementedError, match="one task per call"):
        layer(torch.randn(2, 3, 5, 5))


class OwnAttention(nn.MultiheadAttention):
    def forward(self, query, key, value, **kwargs):  # a forward of its own: not converted
        return super().forward(query, key, value, **kwargs)


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, 16))


def test_unserved_weights_are_reported_not_converted():
    model = nn.Sequential(nn.Embedding(10, 16), OwnAttention(16, 2, batch_first=True), nn.Linear(16, 4),
                          Tokens(), nn.MultiheadAttention(16, 2))
    report = maskops.conversion_report(model)
    assert set(report.left) == {"0.weight", "1.in_proj_weight", "1.out_proj"}
    assert "reads out_proj.weight directly" in report.left["1.out_proj"]
    assert report.unmasked == {"3.token": "Tokens"}  # not a layer weight: listed, not "left"
    assert report.converted == {"2": "MaskedLinear", "4": "MaskedMultiheadAttention",
                                "4.out_proj": "MaskedNonDynamicallyQuantizableLinear"}
    with pytest.raises(ValueError, match="in_proj_weight"):
        maskops.convert(model, strict=True)
    assert type(model[2]) is nn.Linear  # strict refused before changing anything
    with pytest.warns(UserWarning, match="out_proj"):
        maskops.convert(model)
    assert type(model[1].out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert isinstance(model[2], maskops.nn.MaskedLinear)
    assert maskops.conversion_report(model).converted == report.converted
    assert "not a layer weight, unmasked: 3.token (Tokens)" in str(report)


def test_a_class_can_stay_plain():
    class Head(nn.Linear):
        maskops_keep_plain = True

    model = nn.Sequential(nn.Linear(4, 4), Head(4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maskops.convert(model, strict=True)
    assert type(model[1]) is Head
    assert maskops.conversion_report(model).kept == {"1": "Head"}


def test_packnet_on_subclassed_layers_keeps_earlier_tasks_exact():
    torch.manual_seed(3)
    model = nn.Sequential(StdConv2d(3, 8, 3, padding=1), nn.ReLU(), Conv2dSame(8, 8, 3, stride=2),
                          nn.Flatten(), CastingLinear(8 * 4 * 4, 5))
    net = maskops.PackNet(model, prune_ratio=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3)
    x = torch.randn(4, 3, 8, 8)

    def train(steps=3):
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), torch.arange(4)).backward()
            opt.step()

    assert_first_task_kept(net, model, x, train)
    with pytest.raises(ValueError, match="transforms the weight"):
        net.export(1)
    net.close()


def test_packnet_warns_about_large_unmasked_parameters():
    model = nn.Sequential(nn.Embedding(100, 64), nn.Linear(64, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = maskops.PackNet(model, prune_ratio=0.5)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("maskops.convert left") and "0.weight" in m for m in messages)
    assert any(m.startswith("PackNet: 0.weight are not masked weights (each task keeps its own copy")
               for m in messages)
    net.close()


def test_export_restores_the_subclass():
    model = nn.Sequential(PlainSubclass(6, 4))
    net = maskops.PackNet(model, prune_ratio=0.5)
    net.begin_task()
    net.end_task()
    exported = net.export(1)
    assert type(exported[0]) is PlainSubclass
    x = torch.randn(3, 6)
    net.set_task(1)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x))
    net.close()


def test_weight_transforming_layer_compiles():
    g = torch.Generator().manual_seed(4)
    layer = maskops.convert(StdConv2d(3, 4, 3, padding=1))
    layer.owner.copy_(_owner(layer.weight.shape, g))
    layer.task = 2
    x = torch.randn(2, 3, 6, 6, generator=g)
    torch.testing.assert_close(torch.compile(layer, fullgraph=True)(x), layer(x))
