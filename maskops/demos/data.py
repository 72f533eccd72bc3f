"""scikit-learn's bundled digits (8x8 images, 10 classes), split into tasks.  No download."""
from __future__ import annotations

from typing import NamedTuple

import torch


class TaskData(NamedTuple):
    classes: tuple[int, ...]
    x_train: torch.Tensor  # (n, 1, 8, 8) float32 in [0, 1]
    y_train: torch.Tensor  # (n,) int64, global class ids
    x_test: torch.Tensor
    y_test: torch.Tensor


def digits_tasks(num_tasks: int = 5, test_fraction: float = 0.25, seed: int = 0) -> list[TaskData]:
    """Digits split into `num_tasks` tasks of consecutive classes (5 tasks: 0/1, 2/3, ...)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=generator)
    x, y = x[order], y[order]
    n_test = int(len(y) * test_fraction)
    per_task = 10 // num_tasks
    tasks = []
    for t in range(num_tasks):
        classes = tuple(range(t * per_task, (t + 1) * per_task))
        keep = torch.isin(y, torch.tensor(classes))
        index = keep.nonzero().flatten()
        test, train = index[index < n_test], index[index >= n_test]
        tasks.append(TaskData(classes, x[train], y[train], x[test], y[test]))
    return tasks
