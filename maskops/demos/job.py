"""The job maskops is for: PackNet trains five digit tasks into one network, then one call
serves a batch that mixes all of them, against naive masking (the weight masked on every call,
one call per task) and dense per-task copies (one call per task, five copies of the weights).

The network has no BatchNorm and PackNet freezes biases after task 1: per-sample tasks in one
call need every tensor other than the masked weights shared by all tasks (per-task BatchNorm
statistics, the better choice for accuracy when a batch holds one task, cannot be mixed)."""
from __future__ import annotations

import argparse
import copy

import torch
from torch import nn
from tqdm import tqdm

import maskops
from maskops.bench.overhead import side_by_side
from maskops.demos.data import digits_tasks
from maskops.demos.packnet import Trainer, summarize, train_packnet
from maskops.packnet import TaskHeads
from maskops.serving import Runner


def network(num_tasks: int, width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(2 * width * 16, 64), nn.ReLU(), TaskHeads(64, [2] * num_tasks))


def _megabytes(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2 ** 20


def serve(net, model, tasks) -> dict:
    """Every test image of every task in one shuffled batch: accuracy, agreement with the
    per-task copies, latency and weight memory of the three ways to serve it."""
    x = torch.cat([t.x_test for t in tasks])
    task_ids = torch.cat([torch.full((len(t.y_test),), i, dtype=torch.long) for i, t in enumerate(tasks, 1)])
    labels = torch.cat([t.y_test - t.classes[0] for t in tasks])
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    x, task_ids, labels = x[order], task_ids[order], labels[order]
    groups = [(t, (task_ids == t).nonzero().flatten()) for t in range(1, len(tasks) + 1)]
    copies = {t: net.export(t) for t, _ in groups}
    model.eval()

    runner = Runner(net, batch_sizes=[len(labels)])

    def mixed():
        return runner(x, task_ids)  # checked and routed once, for every layer

    def loop(run):
        y = torch.empty(len(labels), 2)
        for t, rows in groups:
            y[rows] = run(t, x[rows])
        return y

    naive = copy.deepcopy(model)  # its task changes per group

    def naive_task(t, rows):
        for module in naive.modules():
            if isinstance(module, (maskops.nn.TaskMaskedLayer, TaskHeads)):
                module.task = t
        return naive(rows)

    def naive_loop():
        with maskops.use_backend("torch"):  # the masked weight is built on every call
            return loop(naive_task)

    def cached_loop():
        return loop(lambda t, rows: copies[t](rows))

    with torch.inference_mode():
        served = mixed()
        reference = cached_loop()
        # Each baseline alternates with the mixed call in blocks of calls, so that the machine's
        # drifts hit both sides of a ratio alike.
        vs_cached = side_by_side(mixed, cached_loop, rounds=11, block_ms=20)
        vs_naive = side_by_side(mixed, naive_loop, rounds=11, block_ms=20)
    latency = {"mixed_ms": vs_cached.us / 1e3, "cached_loop_ms": vs_cached.baseline_us / 1e3,
               "naive_loop_ms": vs_naive.baseline_us / 1e3,
               "vs_cached": 1 / vs_cached.ratio, "vs_naive": 1 / vs_naive.ratio}
    masked = [m for m in model.modules() if isinstance(m, maskops.nn.TaskMaskedLayer)]
    return {
        "images": len(labels),
        "accuracy": (served.argmax(1) == labels).float().mean().item(),
        "max_abs_diff_vs_copies": (served - reference).abs().max().item(),
        **latency,
        "weights_mb": _megabytes(model.parameters()),
        "owners_mb": _megabytes(owner for m in masked for _, owner in m.masked_pairs()),
        "copies_mb": sum(_megabytes(c.parameters()) for c in copies.values()),
    }


def _plot(summary: dict, served: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (accuracy, latency) = plt.subplots(1, 2, figsize=(10, 4))
    tasks = range(1, len(summary["per_task"]) + 1)
    learned = [summary["after_each_task"][t - 1][t - 1] for t in tasks]
    accuracy.bar([t - 0.2 for t in tasks], learned, width=0.4, label="right after learning it")
    accuracy.bar([t + 0.2 for t in tasks], summary["per_task"], width=0.4, label="after all tasks")
    accuracy.set(title="PackNet: test accuracy per task", xlabel="task", ylim=(0.5, 1.02))
    accuracy.legend(loc="lower right")
    names = ["naive, per task", "dense copies, per task", "maskops, one mixed call"]
    values = [served["naive_loop_ms"], served["cached_loop_ms"], served["mixed_ms"]]
    latency.barh(names, values)
    latency.set(title=f"serving {served['images']} images of mixed tasks", xlabel="median ms")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maskops demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12, help="training epochs per task")
    parser.add_argument("--retrain-epochs", type=int, default=4, help="epochs after pruning")
    parser.add_argument("--width", type=int, default=16, help="channels of the first conv layer")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--plot", metavar="PATH", default="maskops-demo.png",
                        help="where to save the plot (default: %(default)s; '' for none)")
    args = parser.parse_args(argv)

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tasks = digits_tasks(num_tasks=5)
    print(f"maskops {maskops.__version__}; backends here: {', '.join(maskops.available_backends())}")
    print(f"PackNet on scikit-learn's digits: {len(tasks)} tasks of 2 classes, learned one after another")
    try:
        total = len(tasks) * args.epochs + (len(tasks) - 1) * args.retrain_epochs
        with tqdm(total=total, unit="epoch", desc="training") as bar:
            trainer = Trainer(args.epochs, args.retrain_epochs, 0.05, bar, seed=0)
            net, model, matrix = train_packnet(tasks, trainer, args.width, network=network,
                                               bias="frozen", batchnorm="frozen")
        summary = summarize(matrix)
        served = serve(net, model, tasks)
    finally:
        torch.set_num_threads(threads)
    usage = net.usage()
    total_weights = sum(usage.values())
    print("\nweights per task: " + ", ".join(
        f"{'free' if t == 0 else f'task {t}'} {n / total_weights:.0%}" for t, n in usage.items()))
    print("test accuracy per task after all five: " + " ".join(f"{a:.3f}" for a in summary["per_task"])
          + f"  (average {summary['avg_acc']:.3f}, largest drop since learning a task "
            f"{summary['max_forgetting']:.3f})")
    print(f"\nServing {served['images']} test images of all five tasks, shuffled, in one batch "
          f"({args.threads} thread{'s' if args.threads > 1 else ''}, median ms):")
    print(f"  naive masking, one call per task  {served['naive_loop_ms']:8.3f}")
    print(f"  dense per-task copies, per task   {served['cached_loop_ms']:8.3f}")
    print(f"  maskops, one call for all tasks   {served['mixed_ms']:8.3f}   "
          f"({served['vs_naive']:.2f}x naive, {served['vs_cached']:.2f}x copies: medians of "
          f"interleaved blocks)")
    print(f"  accuracy {served['accuracy']:.3f}; largest difference from the copies "
          f"{served['max_abs_diff_vs_copies']:.1e}")
    print(f"Weight memory: maskops {served['weights_mb']:.3f} MB + owners {served['owners_mb']:.3f} MB; "
          f"per-task copies {served['copies_mb']:.3f} MB")
    if args.plot:
        _plot(summary, served, args.plot)
        print(f"plot written to {args.plot}")
    net.close()
    return 0
