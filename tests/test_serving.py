"""maskops.serving.Runner: padded, routed, one forward per bucket; the same outputs as serving
each sample alone with its task."""
import pytest
import torch
from torch import nn

import maskops
from maskops.packnet import TaskHeads
from maskops.serving import Runner


def _model(seed=0):
    torch.manual_seed(seed)
    model = maskops.convert(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                          nn.Linear(8 * 16, 6)))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, maskops.nn.TaskMaskedLayer):
                layer.owner.copy_(torch.randint(0, 4, layer.owner.shape, generator=g))
    return model.eval()


def _one_by_one(model, x, tasks):
    rows = []
    with torch.no_grad():
        for i, task in enumerate(tasks):
            maskops.set_task(model, task)
            rows.append(model(x[i:i + 1]))
    return torch.cat(rows)


@pytest.mark.parametrize("batch", [1, 3, 4, 7, 10])
@pytest.mark.parametrize("compile", [False, True])
def test_runner_matches_one_sample_at_a_time(batch, compile):
    model = _model()
    runner = Runner(model, batch_sizes=[4, 2], compile=compile)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 3, 4, 4, generator=g)
    tasks = torch.randint(1, 4, (batch,), generator=g).tolist()
    with maskops.use_backend("cpu"):
        served = runner(x, tasks)
        expected = _one_by_one(model, x, tasks)
    assert served.shape == expected.shape
    torch.testing.assert_close(served, expected)


def test_runner_keeps_the_memory_format_of_a_shuffled_batch():
    """Sorting the batch by task keeps it channels_last, so that channels_last models stay on
    their fast path, and the output comes back in the request's order, in the model's format."""
    model = maskops.convert(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()))
    with torch.no_grad():
        model[0].owner.copy_(torch.randint(1, 4, model[0].owner.shape))
    model = model.eval().to(memory_format=torch.channels_last)
    seen = []
    model[0].register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    x = torch.randn(6, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    tasks = [3, 1, 2, 1, 3, 2]
    with maskops.use_backend("cpu"):
        served = Runner(model, batch_sizes=[6])(x, tasks)
        expected = _one_by_one(model, x, tasks)
    assert seen[0] and served.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(served, expected)


def test_buckets():
    runner = Runner(_model(), batch_sizes=(8, 1, 32))
    assert runner.batch_sizes == [1, 8, 32]
    assert [runner.bucket(b) for b in (1, 2, 8, 9, 32)] == [1, 8, 8, 32, 32]


def test_runner_switches_packnet_task_heads():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), TaskHeads(8, [2, 2]))
    net = maskops.PackNet(model, 0.5, bias="frozen", batchnorm="frozen")
    for _ in range(2):
        net.begin_task()
        net.prune()
        net.end_task()
    x = torch.randn(5, 3, 2, 2)
    tasks = [1, 2, 2, 1, 2]
    served = Runner(net, batch_sizes=[8])(x, tasks)
    with torch.no_grad():
        for i, task in enumerate(tasks):
            net.set_task(task)
            torch.testing.assert_close(served[i:i + 1], model(x[i:i + 1]))
    net.close()


def test_bad_requests_are_refused_clearly():
    runner = Runner(_model(), batch_sizes=[2])
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="one task per sample"):
        runner(x, [1, 2, 3])
    with pytest.raises(ValueError, match="integer task ids"):
        runner(x, [1.0, 2.0])
    with pytest.raises(ValueError, match="1..255"):
        runner(x, [1, 0])
    with pytest.raises(ValueError, match="positive ints"):
        Runner(_model(), batch_sizes=[0])
