"""`maskops demo` (maskops/demos/job.py): train, then serve a mixed-task batch."""
import pytest
import torch
from tqdm import tqdm

from maskops.demos import job
from maskops.demos.data import digits_tasks
from maskops.demos.packnet import Trainer, train_packnet


def test_mixed_batch_equals_the_per_task_copies():
    torch.manual_seed(0)
    tasks = digits_tasks(num_tasks=5)
    with tqdm(total=9, disable=True) as bar:
        net, model, matrix = train_packnet(tasks, Trainer(1, 1, 0.05, bar, seed=0), 4, network=job.network,
                                           bias="frozen", batchnorm="frozen")
    served = job.serve(net, model, tasks)
    net.close()
    assert served["images"] == sum(len(t.y_test) for t in tasks)
    assert served["max_abs_diff_vs_copies"] < 1e-4
    # The mixed call predicts what each task's own call predicted while training was scored.
    counts = [len(t.y_test) for t in tasks]
    scored = sum(a * n for a, n in zip(matrix[-1], counts)) / sum(counts)
    assert served["accuracy"] == pytest.approx(scored, abs=2 / sum(counts))
    assert served["copies_mb"] == 5 * served["weights_mb"] - 4 * sum(
        p.numel() * 4 for p in model[-1].parameters()) / 2 ** 20  # each copy keeps one head
    assert min(served[k] for k in ("mixed_ms", "cached_loop_ms", "naive_loop_ms")) > 0


def test_demo_prints_the_job_and_saves_the_plot(tmp_path, capsys):
    plot = tmp_path / "demo.png"
    assert job.main(["--epochs", "1", "--retrain-epochs", "1", "--width", "4", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy per task after all five" in out and "maskops, one call for all tasks" in out
    assert plot.stat().st_size > 0
