"""PackNet on scikit-learn's digits: 5 tasks of 2 classes learned one after another
(task-incremental: the task id is known at test time), against fine-tuning one network
(forgets), one network per task (upper bound) and joint training on all tasks at once.
With --structure block or channel, PackNet also runs pruning whole blocks or output channels
(what lets the kernels skip what a task cannot see), next to pruning single weights."""
from __future__ import annotations

import argparse
import contextlib
import json

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import maskops
from maskops.demos.data import digits_tasks
from maskops.packnet import PackNet, TaskHeads

METHODS = ("packnet", "finetune", "individual", "joint")
BATCH = 32


def _network(num_tasks: int, width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width),
        nn.ReLU(), nn.Flatten(), nn.Linear(2 * width * 16, 64), nn.ReLU(),
        TaskHeads(64, [2] * num_tasks))


def _set_task(model: nn.Module, task) -> None:
    for module in model.modules():
        if isinstance(module, TaskHeads):
            module.task = task


class Trainer:
    """SGD with momentum and weight decay over model.parameters(); a new optimizer per phase."""

    def __init__(self, epochs: int, retrain_epochs: int, lr: float, progress: tqdm, seed: int):
        self.epochs, self.retrain_epochs, self.lr, self.progress = epochs, retrain_epochs, lr, progress
        self.generator = torch.Generator().manual_seed(seed)

    def fit(self, model, x, y, tasks, epochs: int, lr: float | None = None) -> None:
        """Cross-entropy on each sample's own head; `tasks` is an int or an (n,) tensor."""
        optimizer = torch.optim.SGD(model.parameters(), lr=lr or self.lr, momentum=0.9,
                                    weight_decay=5e-4)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=self.generator)
            for start in range(0, len(y), BATCH):
                index = order[start:start + BATCH]
                if isinstance(tasks, torch.Tensor):
                    _set_task(model, tasks[index])
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[index]), y[index]).backward()
                optimizer.step()
            self.progress.update(1)


def _labels(y: torch.Tensor, task) -> torch.Tensor:
    """Class ids within the task (its head has one output per class)."""
    return y - task.classes[0]


@torch.no_grad()
def _accuracy(model, task) -> float:
    model.eval()
    predicted = model(task.x_test).argmax(1)
    return (predicted == _labels(task.y_test, task)).float().mean().item()


def train_packnet(tasks, trainer, width, network=None, **options) -> tuple:
    """PackNet over `tasks` one after another: (net, model, accuracy matrix), where row t holds
    the accuracy on tasks 1..t after learning task t.  `network(num_tasks, width)` builds the
    model (default: the demo's conv net with BatchNorm); `options` go to PackNet."""
    model = (network or _network)(len(tasks), width)
    # Equal capacity per task: task t keeps 1/(T-t+1) of what is free; the last keeps all.
    ratios = [1 - 1 / (len(tasks) - t) for t in range(len(tasks))]
    net = PackNet(model, prune_ratio=ratios, **options)
    matrix = []
    for task in tasks:
        t = net.begin_task()
        trainer.fit(model, task.x_train, _labels(task.y_train, task), t, trainer.epochs)
        if net.prune_ratio[t - 1] > 0:
            net.prune()
            trainer.fit(model, task.x_train, _labels(task.y_train, task), t, trainer.retrain_epochs,
                        trainer.lr / 10)
        net.end_task()
        matrix.append(_evaluate_seen(tasks[:t], lambda j: net.set_task(j), model))
    return net, model, matrix


def _run_packnet(tasks, trainer, width, structure="weight"):
    net, _, matrix = train_packnet(tasks, trainer, width, structure=structure)
    usage = net.usage()
    total = sum(usage.values())
    print(f"PackNet ({structure}) weights per task: " + ", ".join(
        f"{'free' if t == 0 else f'task {t}'} {n / total:.0%}" for t, n in usage.items()))
    net.close()
    return matrix


def _evaluate_seen(seen, select, model) -> list[float]:
    row = []
    for j, task in enumerate(seen, 1):
        select(j)
        row.append(_accuracy(model, task))
    return row


def _run_finetune(tasks, trainer, width):
    model = _network(len(tasks), width)
    matrix = []
    for t, task in enumerate(tasks, 1):
        _set_task(model, t)
        trainer.fit(model, task.x_train, _labels(task.y_train, task), t,
                    trainer.epochs + trainer.retrain_epochs)
        matrix.append(_evaluate_seen(tasks[:t], lambda j: _set_task(model, j), model))
    return matrix


def _run_individual(tasks, trainer, width):
    accuracies = []
    for task in tasks:
        model = _network(1, width)
        trainer.fit(model, task.x_train, _labels(task.y_train, task), 1,
                    trainer.epochs + trainer.retrain_epochs)
        accuracies.append(_accuracy(model, task))
    return [accuracies[:t] for t in range(1, len(tasks) + 1)]


def _run_joint(tasks, trainer, width):
    model = _network(len(tasks), width)
    x = torch.cat([task.x_train for task in tasks])
    y = torch.cat([_labels(task.y_train, task) for task in tasks])
    ids = torch.cat([torch.full((len(task.y_train),), t) for t, task in enumerate(tasks, 1)])
    trainer.fit(model, x, y, ids, trainer.epochs + trainer.retrain_epochs)
    final = _evaluate_seen(tasks, lambda j: _set_task(model, j), model)
    return [final[:t] for t in range(1, len(tasks) + 1)]


RUNNERS = {"packnet": _run_packnet, "finetune": _run_finetune, "individual": _run_individual,
           "joint": _run_joint}


def summarize(matrix: list[list[float]]) -> dict:
    """matrix[i][j]: accuracy on task j+1 after learning task i+1 (the last row is final)."""
    final = matrix[-1]
    forgetting = [matrix[j][j] - final[j] for j in range(len(final))]
    return {"avg_acc": sum(final) / len(final), "max_forgetting": max(forgetting),
            "per_task": final, "after_each_task": matrix}


def _total_epochs(num_tasks: int, epochs: int, retrain: int, packnets: int) -> int:
    packnet = num_tasks * epochs + (num_tasks - 1) * retrain  # the last task prunes nothing
    baseline = epochs + retrain
    return packnets * packnet + 2 * num_tasks * baseline + baseline  # finetune, individual, joint


def _print_table(results: dict) -> None:
    num_tasks = len(next(iter(results.values()))["per_task"])
    header = f"{'method':<16}" + "".join(f"{f'task {t}':>8}" for t in range(1, num_tasks + 1))
    print(header + f"{'avg_acc':>9}{'max_forgetting':>16}")
    for method, result in results.items():
        print(f"{method:<16}" + "".join(f"{a:8.3f}" for a in result["per_task"])
              + f"{result['avg_acc']:9.3f}{result['max_forgetting']:16.3f}")


def _plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (final, seen) = plt.subplots(1, 2, figsize=(10, 4))
    for method, result in results.items():
        tasks = range(1, len(result["per_task"]) + 1)
        final.plot(tasks, result["per_task"], marker="o", label=method)
        seen.plot(tasks, [sum(row) / len(row) for row in result["after_each_task"]], marker="o",
                  label=method)
    final.set(title="accuracy on each task at the end", xlabel="task", ylabel="test accuracy")
    seen.set(title="mean accuracy on the tasks seen so far", xlabel="tasks learned",
             ylabel="test accuracy")
    for axes in (final, seen):
        axes.set_xticks(list(tasks))
        axes.grid(alpha=0.3)
    final.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maskops demo packnet", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer epochs (about half a minute on 2 cores)")
    parser.add_argument("--epochs", type=int, help="training epochs per task (default 30, quick 12)")
    parser.add_argument("--retrain-epochs", type=int, help="PackNet epochs after pruning (default 10, "
                        "quick 4); the baselines train epochs + retrain-epochs per task")
    parser.add_argument("--width", type=int, default=16, help="channels of the first conv layer")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the networks are too small to share)")
    parser.add_argument("--structure", choices=("weight", "block", "channel"), default="weight",
                        help="also run PackNet pruning whole blocks or output channels")
    parser.add_argument("--backend", choices=maskops.available_backends(),
                        help="maskops backend for PackNet (default: the best one here)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="plot accuracy per task to a PNG file")
    args = parser.parse_args(argv)
    epochs = args.epochs if args.epochs is not None else (12 if args.quick else 30)
    retrain = args.retrain_epochs if args.retrain_epochs is not None else (4 if args.quick else 10)

    tasks = digits_tasks(num_tasks=5)
    print(f"digits: {len(tasks)} tasks, classes {[t.classes for t in tasks]}, "
          f"{sum(len(t.y_train) for t in tasks)} training / {sum(len(t.y_test) for t in tasks)} "
          f"test images; {epochs} epochs per task, PackNet retrains {retrain} after pruning")
    results = {}
    runners = dict(RUNNERS)
    if args.structure != "weight":
        runners = {"packnet": RUNNERS["packnet"],
                   f"packnet-{args.structure}": lambda *a: _run_packnet(*a, structure=args.structure),
                   **{m: r for m, r in RUNNERS.items() if m != "packnet"}}
    backend = maskops.use_backend(args.backend) if args.backend else contextlib.nullcontext()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        total = _total_epochs(len(tasks), epochs, retrain, len(runners) - 3)
        with backend, tqdm(total=total, unit="epoch") as bar:
            for method, runner in runners.items():
                bar.set_description(method)
                torch.manual_seed(args.seed)
                trainer = Trainer(epochs, retrain, args.lr, bar, args.seed)
                results[method] = summarize(runner(tasks, trainer, args.width))
    finally:
        torch.set_num_threads(threads)
    print("\nTest accuracy on each task after learning all of them (task-incremental, 2 classes each);")
    print("forgetting = accuracy right after learning a task minus at the end:")
    _print_table(results)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)
    if args.plot:
        _plot(results, args.plot)
        print(f"plot written to {args.plot}")
    return 0
