"""Models from torchvision and timm: import beside the CPU torch, convert, study."""
import copy

import pytest
import torch
import torch.nn.functional as F

import maskops
from maskops import reference, thirdparty
from maskops.bench import models, study
from maskops.bench.timing import Timing
from maskops.conversion import WeightTransformingLayer
from maskops.nn import TaskMaskedLayer
from tests.helpers import assert_first_task_kept

try:
    tv, timm = thirdparty.torchvision(), thirdparty.timm()
except ImportError as error:  # optional extras: `make setup` installs them
    pytest.skip(str(error), allow_module_level=True)


def _unchanged_by_convert(model, x):
    model.eval()
    with torch.no_grad():
        expected = model(x)
        maskops.convert(model)
        with maskops.use_backend("cpu"):
            torch.testing.assert_close(model(x), expected)


def test_torchvision_model_converts_whole():
    torch.manual_seed(0)
    model = thirdparty.create_model("torchvision:resnet18", num_classes=7)
    report = maskops.conversion_report(model)
    assert not report.left and len(report.converted) == 21  # 20 convs + fc
    _unchanged_by_convert(model, torch.randn(2, 3, 32, 32))


# The models users bring, built for 32 x 32 inputs where they take an image size.
COVERAGE = {
    "torchvision:resnet18": {}, "torchvision:mobilenet_v3_small": {}, "torchvision:efficientnet_b0": {},
    "torchvision:convnext_tiny": {}, "torchvision:vit_b_16": {"image_size": 32}, "torchvision:swin_t": {},
    "timm:vit_tiny_patch16_224": {"img_size": 32}, "timm:deit_tiny_patch16_224": {"img_size": 32},
    "timm:convnext_atto": {}, "timm:mobilevit_xxs": {}, "timm:regnetx_002": {},
    "timm:levit_128s": {"img_size": 32}, "timm:resnetv2_50x1_bit": {}, "timm:tf_efficientnet_b0": {},
    "timm:mobilenetv3_small_050": {}, "timm:ghostnet_100": {}, "timm:mobilenetv4_conv_small": {},
    "timm:poolformer_s12": {}, "timm:resnet18": {},
}


def _build(spec, seed=0):
    torch.manual_seed(seed)
    source, _, name = spec.partition(":")
    kwargs = COVERAGE[spec]
    if source == "torchvision":
        model = tv.models.get_model(name, weights=None, num_classes=5, **kwargs)
    else:
        model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs)
    with torch.no_grad():  # zero-initialized heads would make every output 0
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0, 0.02)
    return model.eval()


def _assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def _task_reference(plain, model, task):
    """`plain` (the unconverted copy) holding weight * visible(owner, task) in every masked weight."""
    layers = dict(plain.named_modules())
    with torch.no_grad():
        for name, layer in model.named_modules():
            if isinstance(layer, TaskMaskedLayer):
                for weight_name, (weight, owner) in zip(layer.masked_weights(), layer.masked_pairs()):
                    getattr(layers[name], weight_name).copy_(weight * reference.visible(owner, task))
    return plain


@pytest.mark.parametrize("spec", COVERAGE)
def test_model_converts_whole_and_serves_each_task(spec):
    model = _build(spec)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert not maskops.conversion_report(model).left
    plain = copy.deepcopy(model)
    with torch.no_grad(), maskops.use_backend("cpu"):
        expected = model(x)
        maskops.convert(model, strict=True)
        _assert_close(model(x), expected)

        g = torch.Generator().manual_seed(2)
        for layer in model.modules():
            if isinstance(layer, TaskMaskedLayer):
                for _, owner in layer.masked_pairs():
                    owner.copy_(torch.randint(0, 3, owner.shape, generator=g))
        maskops.set_task(model, 2)
        # A weight transform (BiT's standardization) sees the visible weights only: its own
        # test covers that; the plain copy would standardize with the hidden ones.
        if not any(isinstance(m, WeightTransformingLayer) and not isinstance(m, timm.layers.Conv2dSame)
                   for m in model.modules()):
            _assert_close(model(x), _task_reference(plain, model, 2)(x))

    net = maskops.PackNet(model, 0.5, bias="frozen", batchnorm="frozen")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step():
        model.train()
        optimizer.zero_grad()
        F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
        # Random weights at 32 x 32 give some models huge gradients (efficientnet's squeeze-
        # excitation: 3e8, in plain torch too); clipping keeps the weights finite.
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        model.eval()

    assert_first_task_kept(net, model, x, train_step)
    net.close()


@pytest.mark.parametrize("spec", ["timm:vit_tiny_patch16_224", "torchvision:vit_b_16"])
def test_vision_transformer_serves_a_mixed_task_batch(spec):
    model = maskops.convert(_build(spec))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad(), maskops.use_backend("cpu"):
        for layer in model.modules():
            if isinstance(layer, TaskMaskedLayer):
                for _, owner in layer.masked_pairs():
                    owner.copy_(torch.randint(0, 3, owner.shape, generator=g))
        tasks = [2, 1, 2]
        maskops.set_task(model, torch.tensor(tasks))
        mixed = model(x)
        for i, task in enumerate(tasks):
            maskops.set_task(model, task)
            _assert_close(mixed[i:i + 1], model(x[i:i + 1]))


def test_windowed_attention_refuses_per_sample_tasks_clearly():
    model = maskops.convert(_build("torchvision:swin_t"))
    maskops.set_task(model, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="batch"):
        model(torch.randn(2, 3, 32, 32))


def test_timm_layer_subclasses_convert():
    torch.manual_seed(1)
    layers = timm.layers
    model = torch.nn.Sequential(layers.StdConv2d(3, 8, 3, padding=1), layers.ScaledStdConv2d(8, 8, 3, padding=1),
                                layers.Conv2dSame(8, 8, 3, stride=2), torch.nn.Flatten(),
                                layers.Linear(8 * 4 * 4, 5))
    _unchanged_by_convert(model, torch.randn(2, 3, 8, 8))
    assert all(isinstance(model[i], WeightTransformingLayer) for i in (0, 1, 2))
    assert isinstance(model[4], maskops.nn.MaskedLinear)  # timm's Linear computes the plain layer
    assert not maskops.conversion_report(model).left


def test_study_runs_a_timm_model():
    model = models.build("timm:mobilenetv3_small_050", num_classes=10)
    results = study.run(model, "mnv3", tasks=2, ratios=[0.5], batches=[2], resolution=32, device="cpu",
                        dtype=torch.float32, timer=lambda fn: (fn(), Timing(1.0, "fake"))[1],
                        impls=["naive", "cached", "cpu"], show_progress=False, rounds=1)
    assert [r["impl"] for r in results] == ["naive", "cached", "cpu"]
    assert all(r["rel_err"] < 1e-4 for r in results)
    assert 0.5 < results[0]["density"] < 1


def test_bad_model_spec():
    with pytest.raises(ValueError, match="torchvision:<name> or timm:<name>"):
        models.build("resnet18")
    with pytest.raises(ValueError, match="a model spec"):
        thirdparty.create_model("keras:resnet")
