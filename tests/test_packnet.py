"""maskops.PackNet: bit-exact no-forgetting under common optimizers, pruning, export, checkpoints."""
import gc
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import maskops
from maskops.nn import MaskedConv2d, MaskedLinear
from maskops.packnet import PackNet, TaskBatchNorm2d, TaskHeads, guard
from tests.helpers import cpu_backends

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These networks are tiny: more threads only add synchronization (badly so on a busy machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01),
    "adam": lambda params: torch.optim.Adam(params, lr=0.01, weight_decay=0.01),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1),
}


def _mlp():
    # The last layer is a shared masked head: every task reads all four logits.
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4))


def _convnet():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, stride=2, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 3 * 3, 8), nn.ReLU(), TaskHeads(8, [4, 4, 4]))


MODELS = {"mlp": (_mlp, (6,)), "convnet": (_convnet, (2, 8, 8))}


def _batch(kind, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(10, *MODELS[kind][1], generator=generator)
    return x, torch.randint(0, 4, (10,), generator=generator)


def _train(model, optimizer, x, y, steps=4):
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


@torch.no_grad()
def _eval(model, x):
    return model.eval()(x).clone()


@torch.no_grad()
def _outputs(model, x):
    """A finished task's outputs in eval and train mode (its BatchNorm ignores the batch in both)."""
    return _eval(model, x), model.train()(x).clone()


def _learn_first_task(kind, **options):
    model = MODELS[kind][0]()
    net = PackNet(model, prune_ratio=0.5, **options)
    x, y = _batch(kind, 1)
    net.begin_task()
    optimizer = OPTIMIZERS["sgd"](model.parameters())
    _train(model, optimizer, x, y)
    net.prune()
    _train(model, optimizer, x, y)
    net.end_task()
    return model, net, x


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_finished_task_outputs_are_bit_exact_after_training_the_next(backend, kind, optimizer):
    with maskops.use_backend(backend):
        model, net, x = _learn_first_task(kind)
        before = _outputs(model, x)
        params = [p.detach().clone() for p in model.parameters()]
        assert net.begin_task() == 2
        task2_before = _eval(model, x)
        _train(model, OPTIMIZERS[optimizer](model.parameters()), *_batch(kind, 2))
        # Task 2 did learn, and its gradients stayed inside its own weights.
        assert not torch.equal(_eval(model, x), task2_before)
        assert any(not torch.equal(p, q) for p, q in zip(params, model.parameters()))
        for layer in model.modules():
            if isinstance(layer, (MaskedLinear, MaskedConv2d)):
                assert not layer.weight.grad[layer.owner != 2].any()
        net.set_task(1)
        after = _outputs(model, x)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", [None, "torch"])  # None: the automatic choice for CUDA
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_model_moved_to_cuda_after_wrapping_keeps_finished_tasks(backend, optimizer):
    model = _convnet()
    net = PackNet(model)
    model.cuda()
    x, y = (t.cuda() for t in _batch("convnet", 1))
    with maskops.use_backend(backend):
        net.begin_task()
        _train(model, OPTIMIZERS[optimizer](model.parameters()), x, y)
        net.prune()
        _train(model, OPTIMIZERS[optimizer](model.parameters()), x, y)
        net.end_task()
        before = _outputs(model, x)
        net.begin_task()
        _train(model, OPTIMIZERS[optimizer](model.parameters()), *(t.cuda() for t in _batch("convnet", 2)))
        net.set_task(1)
        after = _outputs(model, x)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])


def test_without_the_optimizer_hook_weight_decay_changes_a_finished_task():
    model, net, x = _learn_first_task("mlp")
    before = _outputs(model, x)[0]
    net.close()
    net.begin_task()
    _train(model, OPTIMIZERS["sgd"](model.parameters()), *_batch("mlp", 2))
    net.set_task(1)
    assert not torch.equal(_outputs(model, x)[0], before)


@pytest.mark.parametrize("kind", MODELS)
def test_one_optimizer_over_all_tasks_keeps_every_finished_task(kind):
    model = MODELS[kind][0]()
    net = PackNet(model, prune_ratio=[0.6, 0.5, 0.0])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.01)
    x = _batch(kind, 0)[0]
    finished = []
    for task in (1, 2, 3):
        net.begin_task()
        _train(model, optimizer, *_batch(kind, task))
        net.prune()
        _train(model, optimizer, *_batch(kind, task))
        net.end_task()
        finished.append(_outputs(model, x))
        for earlier, expected in enumerate(finished, 1):
            net.set_task(earlier)
            assert all(map(torch.equal, _outputs(model, x), expected))


def test_per_task_batchnorm_keeps_separate_statistics():
    model, net, x = _learn_first_task("convnet")
    bn = model[1]
    assert isinstance(bn, TaskBatchNorm2d) and bn.frozen
    task1 = bn.running_mean.clone(), bn.weight.detach().clone()
    net.begin_task()
    assert not bn.frozen
    _train(model, OPTIMIZERS["sgd"](model.parameters()), *_batch("convnet", 2))
    task2 = bn.running_mean.clone(), bn.weight.detach().clone()
    assert not torch.equal(task1[0], task2[0]) and not torch.equal(task1[1], task2[1])
    net.set_task(1)
    assert torch.equal(bn.running_mean, task1[0]) and torch.equal(bn.weight, task1[1]) and bn.frozen
    net.set_task(2)
    assert torch.equal(bn.running_mean, task2[0]) and torch.equal(bn.weight, task2[1])


def test_frozen_policies_train_shared_state_with_the_first_task_only():
    model, net, x = _learn_first_task("convnet", bias="frozen", batchnorm="frozen")
    shared = [model[0].bias, model[7].bias, model[1].weight, model[1].running_mean, model[4].running_var]
    values = [t.detach().clone() for t in shared]
    net.begin_task()
    _train(model, OPTIMIZERS["adamw"](model.parameters()), *_batch("convnet", 2))
    assert all(torch.equal(t, v) for t, v in zip(shared, values))
    # Nothing per task left to switch: one batch can mix tasks.
    net.end_task()
    tasks = torch.tensor([1, 2, 2, 1, 2, 1, 1, 2, 1, 2])
    net.set_task(tasks)
    mixed = _outputs(model, x)[0]
    for task in (1, 2):
        net.set_task(task)
        rows = tasks == task
        torch.testing.assert_close(mixed[rows], _outputs(model, x)[0][rows])


def test_per_sample_tasks_need_frozen_policies():
    model, net, x = _learn_first_task("mlp")
    with pytest.raises(ValueError, match="bias='frozen'"):
        net.set_task(torch.tensor([1, 1]))


def test_prune_frees_the_smallest_weights_exact_count_per_layer():
    model = _mlp()
    net = PackNet(model, prune_ratio=[0.3, 0.25, 0.0])
    layers = {"0": model[0], "2": model[2], "4": model[4]}
    for task in (1, 2, 3):
        net.begin_task()
        _train(model, OPTIMIZERS["sgd"](model.parameters()), *_batch("mlp", task))
        owned = {name: int((layer.owner == task).sum()) for name, layer in layers.items()}
        kept = {name: layer.weight.detach().clone() for name, layer in layers.items()}
        pruned = net.prune()
        for name, layer in layers.items():
            expected = round([0.3, 0.25, 0.0][task - 1] * owned[name])
            assert pruned[name] == expected
            # begin_task took every free weight, so the free ones now are the pruned ones.
            freed = layer.owner == 0
            assert int(freed.sum()) == expected and int((layer.owner == task).sum()) == owned[name] - expected
            assert not layer.weight[freed].any()
            if expected:
                assert kept[name][freed].abs().max() <= kept[name][layer.owner == task].abs().min()
        net.end_task()
    assert net.num_tasks == 3 and 0 not in net.usage()  # the last task took every free weight


@pytest.mark.parametrize("backend", cpu_backends())
def test_export_gives_plain_layers_with_the_same_outputs(backend):
    with maskops.use_backend(backend):
        model, net, x = _learn_first_task("convnet")
        net.begin_task()
        _train(model, OPTIMIZERS["sgd"](model.parameters()), *_batch("convnet", 2))
        for task in (1, 2):
            exported = net.export(task)
            assert all(type(m).__module__.startswith("torch.") for m in exported.modules())
            net.set_task(task)
            torch.testing.assert_close(exported(x), model.eval()(x), rtol=1e-5, atol=1e-6)
        assert net.task == 2 and net.active_task == 2  # export leaves the model as it was


@pytest.mark.parametrize("kind", MODELS)
def test_save_and_load_into_a_fresh_model(tmp_path, kind):
    model, net, x = _learn_first_task(kind)
    net.begin_task()
    _train(model, OPTIMIZERS["sgd"](model.parameters()), *_batch(kind, 2))
    expected = []
    for task in (1, 2):
        net.set_task(task)
        expected.append(_eval(model, x))
    path = tmp_path / "packnet.pt"
    net.save(path)
    assert torch.load(path, weights_only=True)["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["packnet.pt"]

    fresh = MODELS[kind][0]()
    loaded = PackNet.load(path, fresh)
    assert (loaded.num_tasks, loaded.active_task, loaded.task) == (2, 2, 2)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    for task in (1, 2):
        loaded.set_task(task)
        assert torch.equal(_eval(fresh, x), expected[task - 1])
    # Training goes on where it stopped, and task 1 stays protected.
    loaded.set_task(2)
    _train(fresh, OPTIMIZERS["adamw"](fresh.parameters()), *_batch(kind, 3))
    loaded.set_task(1)
    assert torch.equal(_eval(fresh, x), expected[0])


def test_load_rejects_other_files_and_versions(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"format": "maskops.packnet", "version": 99}, path)
    with pytest.raises(ValueError, match="version 99"):
        PackNet.load(path, _mlp())
    torch.save(_mlp().state_dict(), path)
    with pytest.raises(ValueError, match="not a maskops PackNet checkpoint"):
        PackNet.load(path, _mlp())


def test_task_ids_out_of_range_and_misuse_raise():
    model, net, x = _learn_first_task("convnet")
    for bad in (0, 2, -1):
        with pytest.raises(ValueError, match=r"task must be in 1\.\.1"):
            net.set_task(bad)
        with pytest.raises(ValueError, match=r"task must be in 1\.\.1"):
            net.export(bad)
    with pytest.raises(TypeError):
        net.set_task(1.0)
    with pytest.raises(RuntimeError, match="begin_task"):
        net.prune()
    with pytest.raises(RuntimeError, match="begin_task"):
        net.end_task()
    net.begin_task()
    with pytest.raises(RuntimeError, match="end_task"):
        net.begin_task()
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        net.prune(1.0)
    with pytest.raises(ValueError, match="bias must be one of"):
        PackNet(_mlp(), bias="shared")
    net.end_task()
    with pytest.warns(RuntimeWarning, match="no free weight"):
        net.begin_task()  # task 2 never pruned
    net.end_task()
    with pytest.raises(ValueError, match="no head"):
        net.begin_task()  # TaskHeads has three heads


def test_hook_spares_other_optimizers_and_serves_several_packnets():
    (model_a, net_a, x_a), (model_b, net_b, x_b) = _learn_first_task("mlp"), _learn_first_task("convnet")
    expected = _outputs(model_a, x_a)[0], _outputs(model_b, x_b)[0]
    other = nn.Linear(3, 3)
    weight = other.weight.detach().clone()
    other.weight.grad = torch.ones_like(weight)
    torch.optim.SGD(other.parameters(), lr=0.5).step()
    assert torch.equal(other.weight, weight - 0.5)
    net_a.begin_task(), net_b.begin_task()
    optimizer = OPTIMIZERS["sgd"](list(model_a.parameters()) + list(model_b.parameters()))
    for _ in range(3):
        optimizer.zero_grad()
        (F.cross_entropy(model_a(x_a), torch.zeros(10, dtype=torch.long))
         + F.cross_entropy(model_b(x_b), torch.zeros(10, dtype=torch.long))).backward()
        optimizer.step()
    net_a.set_task(1), net_b.set_task(1)
    assert torch.equal(_outputs(model_a, x_a)[0], expected[0])
    assert torch.equal(_outputs(model_b, x_b)[0], expected[1])


def test_the_hook_goes_when_no_packnet_is_left():
    gc.collect()
    net = PackNet(_mlp())
    assert guard.installed()
    net.close()
    del net
    gc.collect()
    assert not guard.installed()
    dropped = PackNet(_mlp())
    del dropped
    gc.collect()
    assert not guard.installed()


def test_task_heads_select_and_mix_tasks():
    heads = TaskHeads(5, [3, 3])
    x = torch.randn(4, 5)
    heads.task = torch.tensor([2, 1, 1, 2])
    mixed = heads(x)
    torch.testing.assert_close(mixed[[1, 2]], heads.heads[0](x[[1, 2]]))
    torch.testing.assert_close(mixed[[0, 3]], heads.heads[1](x[[0, 3]]))
    heads.task = 3
    with pytest.raises(ValueError, match=r"task must be in 1\.\.2"):
        heads(x)


def test_demo_writes_results_and_plot(tmp_path):
    from maskops.demos import packnet as demo

    result, plot = tmp_path / "result.json", tmp_path / "plot.png"
    assert demo.main(["--epochs", "1", "--retrain-epochs", "1", "--width", "4",
                      "--json", str(result), "--plot", str(plot)]) == 0
    data = json.loads(result.read_text())
    assert set(data) == {"packnet", "finetune", "individual", "joint"}
    for method in data.values():
        assert {"avg_acc", "max_forgetting", "per_task"} <= set(method) and len(method["per_task"]) == 5
    assert data["packnet"]["max_forgetting"] == 0.0
    assert plot.stat().st_size > 0


def _saved(tmp_path):
    model, net, _ = _learn_first_task("mlp")
    path = tmp_path / "packnet.pt"
    net.save(path)
    return path, torch.load(path, weights_only=True)


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("config"), "missing config"),
    (lambda p: p.pop("tracked"), "missing tracked"),
    (lambda p: p.update(task=7), r"task must be None or a task id in 1\.\.1, got 7"),
    (lambda p: p.update(num_tasks=300), r"num_tasks must be an int in 0\.\.255, got 300"),
    (lambda p: p.update(num_tasks=-1), "num_tasks must be an int"),
    (lambda p: p.update(active=9), r"active must be None or a task id in 1\.\.1, got 9"),
    (lambda p: p.update(config={"bias": "frozen"}), "config must hold prune_ratio"),
    (lambda p: p["config"].update(colour="red"), "config must hold prune_ratio"),
    (lambda p: p.update(model=[1]), "model must be a dict"),
    (lambda p: p["tracked"].update({k: [] for k in p["tracked"] if isinstance(p["tracked"][k], list)}),
     "does not fit"),
    (lambda p: p["model"].update({k: v.fill_(9) for k, v in p["model"].items() if k.endswith("owner")}),
     "an owner names task 9"),
])
def test_load_reports_malformed_checkpoints(tmp_path, change, message):
    path, payload = _saved(tmp_path)
    change(payload)
    torch.save(payload, path)
    with pytest.raises(ValueError, match=message):
        PackNet.load(path, _mlp())


def test_load_reports_truncated_files_and_a_killed_save_is_overwritten(tmp_path):
    path, _ = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot be read as a checkpoint"):
        PackNet.load(path, _mlp())
    with pytest.raises(FileNotFoundError):
        PackNet.load(tmp_path / "missing.pt", _mlp())
    stray = tmp_path / "packnet.pt.tmp"  # what a save killed before its rename leaves
    stray.write_bytes(b"half a checkpoint")
    model, net, _ = _learn_first_task("mlp")
    net.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packnet.pt"]
    assert PackNet.load(path, _mlp()).num_tasks == 1


def test_set_task_refuses_a_float_tensor():
    model, net, _ = _learn_first_task("mlp")
    with pytest.raises(TypeError, match="integer tensor"):
        net.set_task(torch.tensor(1.7))
    net.set_task(torch.tensor(1))
    assert net.task == 1


# ----------------------------------------------------------------------------- structured pruning


def _blocks(owner2d, rows, cols):
    """Owner values per block of a 2-D owner map (edge blocks smaller): a list of tensors."""
    return [owner2d[r:r + rows, c:c + cols] for r in range(0, owner2d.shape[0], rows)
            for c in range(0, owner2d.shape[1], cols)]


@pytest.mark.parametrize("structure, block", [("block", (4, 8)), ("block", (3, 5)), ("channel", None)])
def test_structured_pruning_frees_whole_units_at_the_requested_ratio(structure, block):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(21, 10), nn.ReLU(), nn.Conv2d(2, 5, 3))
    net = PackNet(model, prune_ratio=0.75, structure=structure, block=block)
    net.begin_task()
    pruned = net.prune()
    for name, layer in (("0", model[0]), ("2", model[2])):
        view = layer.owner.reshape(layer.owner.shape[0], -1)
        unit = (1, view.shape[1]) if structure == "channel" else block
        units = _blocks(view, *unit)
        kept = [u for u in units if (u == 1).any()]
        assert all((u == 1).all() or (u == 0).all() for u in units)  # whole units
        assert len(units) - len(kept) == round(0.75 * len(units))
        assert pruned[name] == int((view == 0).sum())
        assert torch.all(layer.weight[layer.owner == 0] == 0)


def test_structured_pruning_removes_the_weakest_units_and_breaks_ties_by_index():
    model = nn.Sequential(nn.Linear(4, 4))
    net = PackNet(model, prune_ratio=0.5, structure="block", block=(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1., 1., 5., 5.], [1., 1., 5., 5.],
                                            [3., 3., 3., 3.], [3., 3., 3., 3.]]))
    net.begin_task()
    net.prune()
    # Blocks by RMS: 1, 5, 3, 3 -> the two weakest are the 1-block and the first 3-block.
    assert model[0].owner.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]]


@pytest.mark.parametrize("structure", ["block", "channel"])
def test_structured_tasks_are_frozen_bit_for_bit(structure):
    model, net, x = _learn_first_task("convnet", structure=structure, block=(4, 8))
    before = _outputs(model, x)
    net.begin_task()
    _train(model, OPTIMIZERS["adamw"](model.parameters()), *_batch("convnet", 2))
    net.set_task(1)
    after = _outputs(model, x)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])


def test_structure_is_saved_and_checked(tmp_path):
    model, net, _ = _learn_first_task("mlp", structure="channel")
    net.save(tmp_path / "p.pt")
    assert PackNet.load(tmp_path / "p.pt", _mlp()).structure == "channel"
    with pytest.raises(ValueError, match="structure must be one of"):
        PackNet(_mlp(), structure="rows")
    with pytest.raises(ValueError, match="block must be two positive ints"):
        PackNet(_mlp(), structure="block", block=(0, 4))


@pytest.mark.parametrize("shape, block", [((4096, 4096), (32, 512)), ((256, 576), (32, 128)),
                                          ((16, 9), (2, 1)), ((64, 64), (32, 16)), ((32, 64), (4, 8)), ((32, 144), (8, 36)), ((2048, 2048), (32, 512)),
                                          ((128, 256), (32, 64)), ((64, 4608), (32, 512))])
def test_default_block_follows_the_layer(shape, block):
    from maskops.packnet.net import default_block
    assert default_block(*shape) == block
