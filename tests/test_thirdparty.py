"""Models from torchvision and timm: import beside the CPU torch, convert, study."""
import pytest
import torch

import maskops
from maskops import thirdparty
from maskops.bench import models, study
from maskops.bench.timing import Timing
from maskops.conversion import WeightTransformingLayer

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


def test_torchvision_attention_is_reported():
    model = thirdparty.create_model("torchvision:vit_b_16", num_classes=5)
    left = maskops.conversion_report(model).left
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in left
    assert "MultiheadAttention" in left["encoder.layers.encoder_layer_0.self_attention.out_proj"]


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
