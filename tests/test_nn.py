"""Drop-in layers, convert, set_task, state_dict round trips."""
import copy
import io

import pytest
import torch
from torch import nn

import maskops
from maskops import reference
from tests.helpers import cpu_backends, owner_map


def _model():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, groups=2, padding_mode="reflect", padding=1),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 10), nn.ReLU(), nn.Linear(10, 4))


@pytest.mark.parametrize("backend", cpu_backends())
def test_convert_keeps_parameters_and_outputs(backend):
    model = _model().eval()
    x = torch.randn(5, 3, 8, 8)
    expected = model(x)
    params = list(model.parameters())
    hooked = []
    model[5].register_forward_hook(lambda *args: hooked.append(1))
    assert maskops.convert(model) is model
    assert all(a is b for a, b in zip(params, model.parameters()))
    assert isinstance(model[0], maskops.nn.MaskedConv2d) and isinstance(model[0], nn.Conv2d)
    assert isinstance(model[5], maskops.nn.MaskedLinear)
    with maskops.use_backend(backend):
        torch.testing.assert_close(model(x), expected)
    assert hooked  # hooks survive the swap


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_masked_conv2d_padding_modes_match_nn_conv2d(padding_mode):
    plain = nn.Conv2d(4, 6, 3, padding=(1, 2), padding_mode=padding_mode, groups=2)
    masked = maskops.nn.MaskedConv2d(4, 6, 3, padding=(1, 2), padding_mode=padding_mode, groups=2)
    masked.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4, 7, 7)
    torch.testing.assert_close(masked(x), plain(x))
    masked.owner.copy_(owner_map(masked.weight.shape))
    masked.task = 2
    padded = nn.functional.pad(x, plain._reversed_padding_repeated_twice, mode=padding_mode) \
        if padding_mode != "zeros" else x
    expected = reference.task_conv2d(padded, plain.weight, masked.owner, 2, plain.bias,
                                     padding=0 if padding_mode != "zeros" else (1, 2), groups=2)
    torch.testing.assert_close(masked(x), expected)


def test_same_constructor_as_torch_layers():
    linear = maskops.nn.MaskedLinear(3, 4, bias=False, dtype=torch.float64)
    assert linear.bias is None and linear.weight.dtype == torch.float64
    assert linear.owner.dtype == torch.uint8 and torch.all(linear.owner == 1)
    conv = maskops.nn.MaskedConv2d(2, 4, kernel_size=(1, 3), stride=(2, 1), padding="valid",
                                   dilation=1, groups=2, bias=True)
    assert conv.weight.shape == (4, 1, 1, 3)
    same = maskops.nn.MaskedConv2d(2, 4, 4, padding="same")
    x = torch.randn(1, 2, 5, 5)
    plain = nn.Conv2d(2, 4, 4, padding="same")
    plain.load_state_dict({k: v for k, v in same.state_dict().items() if k != "owner"})
    torch.testing.assert_close(same(x), plain(x))


def test_plain_state_dict_loads_with_owner_of_ones():
    plain = nn.Linear(5, 3)
    masked = maskops.nn.MaskedLinear(5, 3)
    masked.owner.zero_()
    masked.load_state_dict(plain.state_dict())
    assert torch.all(masked.owner == 1)
    assert torch.equal(masked.weight, plain.weight)


def test_state_dict_round_trip_keeps_owner():
    model = maskops.convert(_model())
    for module in model.modules():
        if hasattr(module, "owner"):
            module.owner.copy_(owner_map(module.owner.shape))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = maskops.convert(_model())
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    for a, b in zip(model.modules(), fresh.modules()):
        if hasattr(a, "owner"):
            assert torch.equal(a.owner, b.owner)
    x = torch.randn(2, 3, 8, 8)
    maskops.set_task(model.eval(), 3)
    maskops.set_task(fresh.eval(), 3)
    torch.testing.assert_close(model(x), fresh(x))


def test_set_task_per_sample_matches_separate_calls():
    model = maskops.convert(_model()).eval()
    for module in model.modules():
        if hasattr(module, "owner"):
            module.owner.copy_(owner_map(module.owner.shape))
    x = torch.randn(4, 3, 8, 8)
    tasks = torch.tensor([3, 1, 2, 1])
    maskops.set_task(model, tasks)
    mixed = model(x)
    for i, t in enumerate(tasks.tolist()):
        maskops.set_task(model, t)
        torch.testing.assert_close(mixed[i:i + 1], model(x[i:i + 1]))


@pytest.mark.parametrize("backend", cpu_backends())
def test_channels_last_model_matches_contiguous_one(backend):
    """model.to(memory_format=torch.channels_last) turns conv weights and owners channels_last:
    outputs and gradients stay those of the contiguous model, per task and mixed."""
    torch.manual_seed(0)
    model = maskops.convert(_model())
    for module in model.modules():
        if hasattr(module, "owner"):
            module.owner.copy_(owner_map(module.owner.shape))
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert channels_last[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert channels_last[0].owner.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 8, 8)
    for task in (2, torch.tensor([3, 1, 2, 1])):
        results = []
        for m, inp in ((model, x), (channels_last, x.contiguous(memory_format=torch.channels_last))):
            maskops.set_task(m, task)
            m.zero_grad()
            with maskops.use_backend(backend):
                y = m(inp)
            y.square().sum().backward()
            results.append([y] + [p.grad for p in m.parameters()])
        for a, b in zip(*results):
            torch.testing.assert_close(a, b)


def test_out_mask_attribute():
    layer = maskops.nn.MaskedLinear(4, 3)
    layer.out_mask = torch.tensor([1.0, 0.0, 1.0])
    y = layer(torch.randn(2, 4))
    assert torch.all(y[:, 1] == 0) and torch.all(y[:, 0] != 0)


@pytest.mark.parametrize("owner, loads", [
    (torch.full((4, 3), 300, dtype=torch.int64), False),  # would wrap to 44 as uint8
    (torch.full((4, 3), 2.7), False),
    (torch.ones(4, 3, dtype=torch.bool), False),
    (torch.full((4, 3), 2, dtype=torch.int64), True),     # task ids: cast without change
])
def test_owner_state_must_hold_task_ids(owner, loads):
    layer = maskops.nn.MaskedLinear(3, 4)
    state = dict(layer.state_dict(), owner=owner)
    if loads:
        layer.load_state_dict(state)
        assert layer.owner.dtype == torch.uint8 and torch.all(layer.owner == 2)
    else:
        with pytest.raises(RuntimeError, match="owner: an owner map holds task ids"):
            layer.load_state_dict(state)
