"""`maskops demo dgm`: class-incremental digits (5 tasks of 2 classes) with DGM-w, DGM-a and fine-tuning.

DGM learns each task's classes with a task-masked conditional GAN and trains
its discriminator/classifier on real new classes plus generated old ones.
Fine-tuning trains the same classifier on each task's real data in turn.
Reported: accuracy on all classes seen so far after each task, each task's
generator mask density, and the generator's size after it grows.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from maskops.demos.data import digits_tasks
from maskops.dgm import DGM, Discriminator

NUM_CLASSES, IMAGE_SHAPE = 10, (1, 8, 8)
VARIANTS = (("dgm", "weight", "DGM-w"), ("dgm_a", "unit", "DGM-a"))


def _parse(argv):
    parser = argparse.ArgumentParser(prog="maskops demo dgm", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer GAN steps per task (a few minutes on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="GAN steps per task (default 2000; --quick 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the networks are tiny, more threads only add overhead)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG grid of generated samples per class")
    return parser.parse_args(argv)


def _accuracy(classify, tasks) -> float:
    x = torch.cat([t.x_test for t in tasks])
    y = torch.cat([t.y_test for t in tasks])
    return float((classify(x) == y).float().mean())


def _parameters(model) -> int:
    return sum(p.numel() for p in model.generator.parameters())


def run_dgm(granularity, tasks, steps, seed, bar):
    torch.manual_seed(seed)
    model = DGM(NUM_CLASSES, IMAGE_SHAPE, granularity)
    result = {"per_task": [], "density": [], "initial_sizes": model.generator.net.sizes(),
              "initial_parameters": _parameters(model), "sizes": [], "parameters": []}
    start = time.perf_counter()
    for k, task in enumerate(tasks):
        info = model.learn_task(task.x_train, task.y_train, steps, callback=lambda _: bar.update())
        result["per_task"].append(_accuracy(model.classify, tasks[:k + 1]))
        result["density"].append(info["density"])
        result["sizes"].append(info["sizes"])
        result["parameters"].append(_parameters(model))
    result["avg_acc"] = result["per_task"][-1]
    result["seconds"] = time.perf_counter() - start
    return result, model


def run_finetune(tasks, steps, seed, bar, batch_size=64):
    """The same classifier (the discriminator's trunk and class head), trained on each task's data only."""
    torch.manual_seed(seed)
    model = Discriminator(NUM_CLASSES, IMAGE_SHAPE)
    seen = []
    result = {"per_task": []}
    start = time.perf_counter()

    @torch.no_grad()
    def classify(x):
        classes = torch.tensor(seen)
        return classes[model(x)[1][:, classes].argmax(1)]

    for k, task in enumerate(tasks):
        seen += list(task.classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.9))
        for _ in range(steps):
            index = torch.randint(len(task.y_train), (batch_size,))
            loss = F.cross_entropy(model(task.x_train[index])[1], task.y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.update()
        result["per_task"].append(_accuracy(classify, tasks[:k + 1]))
    result["avg_acc"] = result["per_task"][-1]
    result["seconds"] = time.perf_counter() - start
    return result


def _plot(models, path, per_class=8, seed=0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 5))
    torch.manual_seed(seed)
    for axis, (name, model) in zip(axes, models.items()):
        classes = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
        images = F.pad(model.sample(classes), (1, 1, 1, 1)).reshape(NUM_CLASSES, per_class, 10, 10)
        grid = images.permute(0, 2, 1, 3).reshape(NUM_CLASSES * 10, per_class * 10)
        axis.imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=1)
        axis.set_title(f"{name}: rows = classes 0..9")
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _report(results, steps):
    print(f"\nclass-incremental digits, 5 tasks x 2 classes, {steps} steps per task")
    print("accuracy on all classes seen so far after each task:")
    names = [(key, results[key].get("variant", "fine-tuning")) for key in ("dgm", "dgm_a", "finetune")]
    print("  task  " + "".join(f"{label:>13}" for _, label in names))
    for k in range(len(results["finetune"]["per_task"])):
        print(f"  {k + 1:>4}  " + "".join(f"{results[key]['per_task'][k]:>13.3f}" for key, _ in names))
    for key, label in names[:2]:
        r = results[key]
        print(f"{label}: mask density per task {[round(d, 3) for d in r['density']]}, "
              f"generator widths {r['initial_sizes']} -> after each task {r['sizes']}, "
              f"parameters {r['initial_parameters']} -> {r['parameters'][-1]}, {r['seconds']:.0f} s")
    print(f"fine-tuning: {results['finetune']['seconds']:.0f} s")


def main(argv=None) -> int:
    from tqdm import tqdm

    args = _parse(argv)
    steps = args.steps or (500 if args.quick else 2000)
    tasks = digits_tasks(num_tasks=5)
    results, models = {}, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with tqdm(total=steps * len(tasks) * (len(VARIANTS) + 1), desc="dgm demo", unit="step") as bar:
            for key, granularity, label in VARIANTS:
                bar.set_description(label)
                results[key], models[label] = run_dgm(granularity, tasks, steps, args.seed, bar)
                results[key]["variant"] = label
            bar.set_description("fine-tuning")
            results["finetune"] = run_finetune(tasks, steps, args.seed, bar)
    finally:
        torch.set_num_threads(threads)
    _report(results, steps)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**results, "config": {"steps": steps, "seed": args.seed, "quick": args.quick}}, f, indent=1)
    if args.plot:
        _plot(models, args.plot)
        print(f"samples: {args.plot}")
    return 0
