"""Routing of mixed-task batches (maskops/routing.py): checked once, sorted once, reused."""
import pytest
import torch

import maskops
from maskops.modes import MAX_TASK, TASK_IDS
from tests.helpers import owner_map


def test_route_sorts_samples_by_task():
    r = maskops.route(torch.tensor([3, 1, 3, 2, 1]))
    assert r.task.dtype == torch.int32 and r.task.tolist() == [3, 1, 3, 2, 1]
    assert r.order.tolist() == [1, 4, 3, 0, 2]
    assert r.offsets.shape == (TASK_IDS + 1,) and r.offsets.device.type == "cpu"
    assert r.offsets[:5].tolist() == [0, 0, 2, 3, 5] and r.offsets[-1] == 5
    assert maskops.route(r) is r


@pytest.mark.parametrize("bad, error, message", [
    (torch.tensor([1, 0]), ValueError, r"task values must be in 1..255, got values in 0..1"),
    (torch.tensor([1, MAX_TASK + 1]), ValueError, "got values in 1..256"),
    (torch.tensor([2 ** 32 + 1]), ValueError, "task values must be in 1..255"),  # no int32 wrap
    (torch.tensor([1.0]), TypeError, "integer dtype"),
    (torch.tensor([True]), TypeError, "integer dtype"),
    (torch.ones(2, 2, dtype=torch.long), ValueError, r"shape \(batch,\)"),
    ([1, 2], TypeError, "integer tensor"),
])
def test_route_rejects_bad_task_ids(bad, error, message):
    with pytest.raises(error, match=message):
        maskops.route(bad)


def test_set_task_routes_once_for_every_layer():
    model = maskops.convert(torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3)))
    maskops.set_task(model, torch.tensor([2, 1, 2]))
    assert isinstance(model[0].task, maskops.Routing) and model[0].task is model[1].task
    model[0].task = torch.tensor([1, 1, 2])  # a tensor set on one layer is routed there
    assert isinstance(model[0].task, maskops.Routing) and model[0].task.task.tolist() == [1, 1, 2]
    with pytest.raises(ValueError, match="task values must be in 1..255"):
        maskops.set_task(model, torch.tensor([1, 300, 2]))


def test_routed_calls_equal_raw_task_tensors():
    w, owner = torch.randn(4, 5), owner_map((4, 5))
    x = torch.randn(3, 2, 5)
    tasks = torch.tensor([2, 3, 1])
    torch.testing.assert_close(maskops.task_linear(x, w, owner, maskops.route(tasks)),
                               maskops.task_linear(x, w, owner, tasks))


def test_a_routing_must_match_the_batch():
    w, owner = torch.randn(4, 5), owner_map((4, 5))
    with pytest.raises(ValueError, match=r"task tensor must have shape \(batch,\) = \(3,\), got \(2,\)"):
        maskops.task_linear(torch.randn(3, 5), w, owner, maskops.route(torch.tensor([1, 2])))
    with pytest.raises(ValueError, match="needs x with a batch dimension"):
        maskops.task_linear(torch.randn(5), w, owner, maskops.route(torch.tensor([1])))
