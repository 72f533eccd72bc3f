"""Serving batches that mix tasks: `Runner(model, batch_sizes=...)(x, tasks)`.

A server receives requests for different tasks and batches them as they come.  The Runner
pads each batch to the next of a few fixed sizes (buckets), routes its task ids once for every
layer and runs the whole batch in one forward, whatever the mix of tasks.  Fixed sizes are
what a compiled model needs to reuse its graphs: with `compile=True` the model is compiled
once and specializes once per bucket, not once per batch size seen.

The batch is sorted by task on the way in and back on the way out, so that each layer finds
a task's samples side by side instead of regrouping them.  A batch larger than the largest
bucket is served in chunks of that size.  Padding rows are zeros given the first sample's
task, and are dropped from the output.  The Runner runs in
inference mode.  On a CUDA device it runs the same eager (or compiled) forward; capturing a
CUDA graph per bucket is not done yet.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

import maskops


class Runner:
    """Serve `model` (converted by maskops.convert, or a maskops.PackNet, whose set_task also
    switches its task heads) on batches whose samples each name their task.

    Args:
        model: the converted model, or the PackNet managing it (per-sample tasks need
            PackNet(..., bias='frozen', batchnorm='frozen')).
        batch_sizes: the bucket sizes a batch is padded to.
        compile: serve through torch.compile(model, dynamic=False), one graph per bucket.
    """

    def __init__(self, model: Union[nn.Module, "maskops.PackNet"], batch_sizes: Sequence[int] = (1, 8, 32),
                 *, compile: bool = False):
        sizes = sorted(set(batch_sizes))
        if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
            raise ValueError(f"batch_sizes must be positive ints, got {batch_sizes!r}")
        self.batch_sizes = sizes
        if isinstance(model, nn.Module):
            self.module = model
            self._set_task = lambda tasks: maskops.set_task(model, tasks)
        else:  # a PackNet
            self.module = model.model
            self._set_task = model.set_task
        self._forward = torch.compile(self.module, dynamic=False) if compile else self.module

    def bucket(self, batch: int) -> int:
        """The size a batch of `batch` samples (at most the largest bucket) is padded to."""
        return next(size for size in self.batch_sizes if size >= batch)

    def __call__(self, x: torch.Tensor, tasks) -> torch.Tensor:
        """The outputs for the samples of `x`, sample i computed for task tasks[i]."""
        tasks = torch.as_tensor(tasks, device="cpu")
        if tasks.dim() != 1 or tasks.is_floating_point() or tasks.dtype == torch.bool:
            raise ValueError(f"tasks must be a 1-D sequence of integer task ids, got {tasks.dtype} "
                             f"of shape {tuple(tasks.shape)}")
        if x.dim() == 0 or x.shape[0] != tasks.shape[0]:
            raise ValueError(f"x holds {x.shape[0] if x.dim() else 0} samples and tasks "
                             f"{tasks.shape[0]}: one task per sample")
        largest = self.batch_sizes[-1]
        outputs = [self._serve(x[start:start + largest], tasks[start:start + largest])
                   for start in range(0, x.shape[0], largest)]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _serve(self, x: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        padding = self.bucket(batch) - batch
        if padding:
            x = torch.cat([x, x.new_zeros((padding, *x.shape[1:]))])
            tasks = torch.cat([tasks, tasks[:1].expand(padding)])
        # Routed once here (the ids checked, the samples sorted by task) and run in that order,
        # so that every layer finds each task's samples side by side, in place; the batch in
        # task order routes to itself, so its routing is built, not sorted again.
        routing = maskops.route(tasks)
        order = routing.order
        identity = torch.arange(len(order))
        in_order = torch.equal(order, identity)
        with torch.inference_mode():
            if not in_order:  # indexing keeps x's memory format (index_select would not)
                x = x[order.to(x.device)]
            self._set_task(maskops.Routing(routing.task.index_select(0, order), identity,
                                           routing.offsets))
            y = self._forward(x)
            if not in_order:  # back to the order of the request
                y = torch.empty_like(y).index_copy_(0, order.to(y.device), y)
            return y[:batch]
