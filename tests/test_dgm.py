import json
import math

import pytest
import torch
from torch import nn

from maskops import reference
from maskops.dgm import DGM, DGMConv2d, DGMLinear, DGMSequential, anneal, gate

GRANULARITIES = ["weight", "unit"]


def _conv_net(granularity):
    return DGMSequential(DGMConv2d(6, 8, 3, padding=1, granularity=granularity), nn.ReLU(),
                         DGMConv2d(8, 5, 3, padding=1, granularity=None if granularity == "unit" else granularity))


def _mlp(granularity, sizes=(6, 8, 7, 5)):
    modules = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        last = i == len(sizes) - 2
        modules.append(DGMLinear(a, b, granularity=None if last and granularity == "unit" else granularity))
        if not last:
            modules.append(nn.LeakyReLU(0.2))
    return DGMSequential(*modules)


def _input(net, batch=16):
    """A random input for `net`: (batch, features), or (batch, channels, 5, 5) for conv nets."""
    first = net.masked_layers()[0]
    return torch.randn(batch, first.weight.shape[1], *((5, 5) if first.weight.dim() == 4 else ()))


def _train(net, task, steps=5, sparsity=0.0, lr=0.05):
    """A few Adam steps (fresh, no weight decay) on a random regression target for `task`."""
    x = _input(net)
    target = torch.randn_like(net(x, task, 1.0))
    params = [p for layer in net.masked_layers() for p in (layer.weight, layer.bias, layer.embedding)
              if p is not None]
    optimizer = torch.optim.Adam(params, lr=lr)
    for step in range(steps):
        s = anneal(step / max(steps - 1, 1), 50.0)
        loss = ((net(x, task, s) - target) ** 2).mean() + net.sparsity_loss(s, sparsity)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _learn(net, steps=5, **kw):
    task = net.begin_task()
    _train(net, task, steps, **kw)
    net.end_task()
    return task


def test_anneal_goes_from_inverse_to_s_max():
    assert anneal(0.0, 400) == pytest.approx(1 / 400)
    assert anneal(1.0, 400) == pytest.approx(400)
    assert anneal(0.5, 400) == pytest.approx((1 / 400 + 400) / 2)


def test_straight_through_gate_is_binary_with_sigmoid_gradient():
    e = torch.randn(20, requires_grad=True)
    g = gate(e, 3.0, straight_through=True)
    assert torch.equal(g, (e > 0).float())
    g.sum().backward()
    soft = torch.sigmoid(3.0 * e.detach())
    torch.testing.assert_close(e.grad, 3.0 * soft * (1 - soft))


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_end_task_binarizes_and_reserves(granularity):
    net = _mlp(granularity)
    net.begin_task()
    embeddings = [layer.embedding.detach().clone() if layer.embedding is not None else None
                  for layer in net.masked_layers()]
    net.end_task()
    in_units = torch.ones(6, dtype=torch.bool)
    for layer, e in zip(net.masked_layers(), embeddings):
        if layer.granularity == "weight":
            expected = e > 0
        else:
            units = e > 0 if e is not None else torch.ones(layer.weight.shape[0], dtype=torch.bool)
            expected = units[:, None] & in_units[None, :]
            in_units = units
        assert torch.equal(layer.task_masks[0].bool(), expected)
        assert torch.equal(layer.reserved, expected)
        assert layer.embedding is None


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_finished_task_matches_reference(granularity):
    layer = DGMLinear(6, 5, granularity=granularity)
    layer.begin_task()
    layer.end_task()
    x = torch.randn(4, 6)
    out_mask = layer.unit_masks[0] if granularity == "unit" else None
    expected = reference.masked_linear(x, layer.weight, layer.task_masks[0], layer.bias, out_mask=out_mask)
    torch.testing.assert_close(layer(x, 1), expected)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_reserved_weights_get_exactly_zero_gradient(granularity):
    layer = DGMLinear(6, 5, granularity=granularity)
    layer.begin_task()
    layer.end_task()
    layer.begin_task()
    x = torch.randn(4, 6)
    layer(x, 2, 5.0).square().sum().backward()
    assert layer.reserved.any()
    assert (layer.weight.grad[layer.reserved] == 0).all()
    assert (layer.weight.grad[~layer.reserved] != 0).any()
    # Same gradient as the reference with the trainable set restricted to unreserved weights.
    weight = layer.weight.detach().clone().requires_grad_(True)
    mask, out_mask = layer._masks(2, 5.0)
    y = reference.masked_linear(x, weight, mask.detach(), layer.bias.detach(),
                                out_mask=None if out_mask is None else out_mask.detach(),
                                trainable=~layer.reserved)
    y.square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, weight.grad)
    if layer.bias is not None and layer.units_reserved.any():
        assert (layer.bias.grad[layer.units_reserved] == 0).all()


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_earlier_task_outputs_are_bit_exact_after_a_later_task(granularity):
    net = _mlp(granularity)
    x = torch.randn(16, 6)
    _learn(net)
    before = net(x, 1).detach().clone()
    _learn(net, steps=10)
    assert torch.equal(net(x, 1), before)
    assert not torch.equal(net(x, 2), before)


def test_conv_layer_reserves_and_stays_bit_exact():
    layer = DGMConv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 6, 6)
    layer.begin_task()
    layer.end_task()
    before = layer(x, 1).detach().clone()
    expected = reference.masked_conv2d(x, layer.weight, layer.task_masks[0], layer.bias, padding=1)
    torch.testing.assert_close(before, expected)
    layer.begin_task()
    optimizer = torch.optim.Adam([layer.weight, layer.bias, layer.embedding], lr=0.05)
    for _ in range(5):
        optimizer.zero_grad()
        layer(x, 2, 5.0).square().mean().backward()
        assert (layer.weight.grad[layer.reserved] == 0).all()
        optimizer.step()
    assert torch.equal(layer(x, 1), before)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_per_sample_tasks_match_single_task_calls(granularity):
    net = _mlp(granularity)
    _learn(net)
    _learn(net)
    x = torch.randn(10, 6)
    tasks = torch.tensor([1, 2, 2, 1, 1, 2, 1, 2, 2, 2])
    expected = torch.where((tasks == 1)[:, None], net(x, 1), net(x, 2))
    torch.testing.assert_close(net(x, tasks), expected)


@pytest.mark.parametrize("make", [_mlp, _conv_net], ids=["linear", "conv"])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_expansion_keeps_earlier_tasks_and_hides_new_units(granularity, make):
    net = make(granularity)
    x = _input(net)
    _learn(net)
    layers = net.masked_layers()
    fan_in = layers[0].weight[0].numel()
    expected_growth = (math.ceil(int(layers[0].reserved.sum()) / fan_in) if granularity == "weight"
                       else int(layers[0].units_reserved.sum()))
    before = net(x, 1).detach().clone()
    sizes = net.sizes()
    added = net.expand()
    assert added[0] == expected_growth > 0 and added[-1] == 0
    assert net.sizes() == [n + a for n, a in zip(sizes, added)]
    assert layers[1].weight.shape[1] == net.sizes()[0]
    for layer in layers:
        assert layer.task_masks.shape[1:] == layer.weight.shape
    assert not layers[0].task_masks[0, sizes[0]:].any()        # new units: off for task 1
    assert not layers[1].task_masks[0, :, sizes[0]:].any()     # and their outgoing weights too
    torch.testing.assert_close(net(x, 1), before, rtol=1e-6, atol=1e-6)
    _learn(net, steps=5)
    torch.testing.assert_close(net(x, 1), before, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_sparsity_loss_lowers_mask_density(granularity):
    def density(strength):
        torch.manual_seed(0)
        net = _mlp(granularity, sizes=(6, 32, 32, 5))
        task = _learn(net, steps=40, sparsity=strength)
        return net.density(task)

    loose, sparse = density(0.0), density(5.0)
    assert sparse < 0.5 * loose


def test_layer_state_dict_loads_into_a_layer_of_the_original_size():
    net = _mlp("weight")
    _learn(net)
    net.expand()
    net.begin_task()  # mid-task: the embedding is saved too
    fresh = _mlp("weight")
    fresh.load_state_dict(net.state_dict())
    x = torch.randn(3, 6)
    assert fresh.sizes() == net.sizes() and fresh.num_tasks == 1
    assert torch.equal(fresh(x, 1), net(x, 1))
    assert torch.equal(fresh(x, 2, 3.0), net(x, 2, 3.0))


def test_dgm_replays_bit_exact_samples_and_saves(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(40, 1, 4, 4)
    y = torch.arange(4).repeat(10)
    model = DGM(4, (1, 4, 4), "unit", z_dim=4, generator_hidden=(8, 8), discriminator_hidden=(8,),
                batch_size=8, expand=False)
    first = y < 2
    model.learn_task(x[first], y[first], steps=3)
    z, classes = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    samples = model.sample(classes, z).detach().clone()
    info = model.learn_task(x[~first], y[~first], steps=3)
    assert info["task"] == 2 and model.class_task.tolist() == [1, 1, 2, 2]
    assert torch.equal(model.sample(classes, z), samples)
    with pytest.raises(ValueError, match="class-incremental"):
        model.learn_task(x[first], y[first], steps=1)
    path = tmp_path / "dgm.pt"
    model.save(path)
    loaded = DGM.load(path)
    all_classes = torch.tensor([0, 1, 2, 3, 3, 2])
    assert torch.equal(loaded.sample(all_classes, z), model.sample(all_classes, z))
    assert torch.equal(loaded.classify(x), model.classify(x))
    assert set(model.classify(x).tolist()) <= {0, 1, 2, 3}


def test_dgm_w_grows_and_loads_grown(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(20, 1, 4, 4)
    y = torch.arange(2).repeat(10)
    model = DGM(2, (1, 4, 4), "weight", z_dim=4, generator_hidden=(8, 8), discriminator_hidden=(8,),
                batch_size=8, sparsity=0.0)
    info = model.learn_task(x[y == 0], y[y == 0], steps=2)
    assert info["sizes"][:2] == [8 + info["added"][0], 8 + info["added"][1]] and info["added"][0] > 0
    path = tmp_path / "dgm.pt"
    model.save(path)
    loaded = DGM.load(path)
    z = torch.randn(3, 4)
    assert loaded.generator.net.sizes() == info["sizes"]
    assert torch.equal(loaded.sample(torch.zeros(3, dtype=torch.long), z),
                       model.sample(torch.zeros(3, dtype=torch.long), z))


def test_demo_writes_results(tmp_path):
    from maskops.demos import dgm as demo

    path, plot = tmp_path / "dgm.json", tmp_path / "samples.png"
    assert demo.main(["--steps", "2", "--json", str(path), "--plot", str(plot)]) == 0
    results = json.loads(path.read_text())
    for key, variant in (("dgm", "DGM-w"), ("dgm_a", "DGM-a")):
        assert results[key]["variant"] == variant
        assert len(results[key]["per_task"]) == 5 and len(results[key]["density"]) == 5
        assert results[key]["avg_acc"] == results[key]["per_task"][-1]
    assert 0.0 <= results["finetune"]["avg_acc"] <= 1.0
    assert plot.stat().st_size > 0


def test_forward_rejects_unknown_tasks():
    layer = DGMLinear(4, 3)
    x = torch.randn(2, 4)
    with pytest.raises(RuntimeError, match="begin_task"):
        layer(x, 1)
    layer.begin_task()
    with pytest.raises(ValueError, match="neither finished"):
        layer(x, 3)
    with pytest.raises(ValueError, match="granularity"):
        DGMLinear(4, 3, granularity="channel")
