"""PackNet (Mallya & Lazebnik, CVPR 2018): several tasks packed into one network.

Task t trains the free weights, prunes a fraction of its own by magnitude (per
layer), retrains, and freezes; inference for task t uses the weights of tasks
1..t.  The `owner` maps of the masked layers say which task owns each weight
(0: free or pruned); the maskops ops read them, so switching tasks touches no
weight and the backward already gives frozen and pruned weights zero gradient.
"""
from __future__ import annotations

import numbers
import warnings
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maskops.conversion import convert
from maskops.modes import MAX_TASK
from maskops.nn import TaskMaskedLayer
from maskops.packnet import checkpoint, guard
from maskops.packnet.export import plain_copy
from maskops.packnet.modules import TaskHeads, convert_batchnorm
from maskops.packnet.tracked import MaskedWeight, Owned, PerTask
from maskops.routing import Routing, route

POLICIES = ("per_task", "frozen")
STRUCTURES = ("weight", "block", "channel")
# Parameters of this many elements or more that are not masked weights get a warning: PackNet
# keeps a copy of them per task (bias="per_task") or leaves them to task 1 ("frozen").
LARGE_UNMASKED = 4096


def default_block(rows: int, columns: int) -> tuple:
    """The block of a layer whose 2-D view (out, in x kh x kw) is rows x columns.

    Layers of 4096 weights or more get blocks for speed: 32 rows (a quarter of the rows where
    the layer has under 64) by up to 512 columns.  The CPU kernels skip hidden 32 x 64 blocks
    and read no mask in fully visible ones, and runs of at least 2 KB of fp32 per weight row
    stream almost as fast as the dense weight (measured, N = K = 4096, 25% of the blocks
    visible: 32 x 64 blocks ran 1.4x faster than the dense op at one row, 32 x 512 blocks
    2.9x); Triton's tiles (32/64 x 64/128) divide them.  Even small convolutions gain (each
    weight serves every output pixel: ResNet-50's 64 x 64 1x1 layers at 56 x 56 ran 2x faster
    at 25% visible).  Smaller layers get blocks of an eighth of each side (64 blocks), so
    pruning stays fine-grained where a coarse block would be a large share of the layer (the
    digits demo's first convolution has 144 weights).
    """
    if rows * columns < 2 ** 12:
        return max(1, rows // 8), max(1, columns // 8)
    block_rows = 32 if rows >= 64 else max(1, rows // 4)
    block_columns = 64 * min(8, columns // 256) if columns >= 256 else max(1, columns // 4)
    return block_rows, block_columns


class PackNet:
    """Manage the tasks of `model`, converted in place by `maskops.convert`.

    Args:
        model: any nn.Module; maskops.convert masks its Linear, Conv2d and
            MultiheadAttention layers, and its BatchNorm layers (subclasses too) become
            freezable (same Parameters).  Every masked weight starts free.
        prune_ratio: fraction of a task's weights that `prune()` frees, per layer;
            a float, or one float per task (0 leaves that task unpruned, as the paper
            does for the last task).
        bias: 'per_task' (default): biases and every other parameter that is not a
            masked weight or BatchNorm keep one value per task; 'frozen': trained by
            task 1, frozen after it (the paper's setting).
        batchnorm: the same choice for BatchNorm affine parameters and running
            statistics.
        structure: what `prune()` frees -- 'weight' (default): single weights by magnitude;
            'block': whole blocks of each layer's 2-D view (out, in x kh x kw) by their RMS
            magnitude, so a task owns whole blocks and the kernels skip the blocks it cannot
            see; 'channel': whole output channels (rows of that view), likewise.
        block: the block shape (rows, columns) of structure='block' for every layer
            (default: `default_block` per layer); edge blocks are smaller where it does not
            divide a layer's view.

    Parameters of TaskHeads head t belong to task t.  After every torch.optim
    step over any of the model's parameters, whatever a finished task depends on
    is restored bit for bit; no call is needed from the user.  This lasts while
    the PackNet object lives, or until `close()`.  Select tasks with `set_task`
    (not `maskops.set_task`, which does not switch per-task state).
    """

    def __init__(self, model: nn.Module, prune_ratio: Union[float, Sequence[float]] = 0.5, *,
                 bias: str = "per_task", batchnorm: str = "per_task", structure: str = "weight",
                 block: Optional[Sequence[int]] = None):
        for name, policy in (("bias", bias), ("batchnorm", batchnorm)):
            if policy not in POLICIES:
                raise ValueError(f"{name} must be one of {POLICIES}, got {policy!r}")
        if structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
        if block is not None:
            block = tuple(block)
            if len(block) != 2 or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in block):
                raise ValueError(f"block must be two positive ints (rows, columns), got {block!r}")
        self.prune_ratio = _check_ratios(prune_ratio)
        self.bias, self.batchnorm = bias, batchnorm
        self.structure, self.block = structure, block
        self.model = convert(model)
        self._batchnorms = convert_batchnorm(model)
        self._layers = [m for m in model.modules() if isinstance(m, TaskMaskedLayer)]
        self._heads = [m for m in model.modules() if isinstance(m, TaskHeads)]
        self._masked = [MaskedWeight(layer, name) for layer in self._layers
                        for name in layer.masked_weights()]
        with torch.no_grad():
            for weight in self._masked:
                weight.owner.zero_()
        self._per_task: list[PerTask] = []
        self._owned: list[Owned] = []
        self._track_whole_tensors()
        self._num_tasks = 0
        self._active: Optional[int] = None
        self._task: Union[int, torch.Tensor, None] = None
        self._unwatch = guard.watch(self)

    # ------------------------------------------------------------------ task lifecycle

    @property
    def num_tasks(self) -> int:
        """Tasks begun so far; valid task ids are 1..num_tasks."""
        return self._num_tasks

    @property
    def active_task(self) -> Optional[int]:
        """The task being trained (between begin_task and end_task), else None."""
        return self._active

    @property
    def task(self):
        """The selected task (int or per-sample tensor), None before the first task."""
        return self._task

    @torch.no_grad()
    def begin_task(self) -> int:
        """Give every free weight to a new task, select it, and return its id (from 1)."""
        if self._active is not None:
            raise RuntimeError(f"task {self._active} is still being trained; call end_task() first")
        task = self._num_tasks + 1
        if task > MAX_TASK:
            raise RuntimeError(f"PackNet supports at most {MAX_TASK} tasks (uint8 owners)")
        for heads in self._heads:
            if task > len(heads.heads):
                raise ValueError(f"task {task} has no head: TaskHeads has {len(heads.heads)}")
        free = sum(int((weight.owner == 0).sum()) for weight in self._masked)
        if self._masked and free == 0:
            warnings.warn(f"task {task} starts with no free weight; call prune() before end_task()",
                          RuntimeWarning, stacklevel=2)
        self._restore_all()
        for tracked in self._per_task:
            tracked.add_task()
        for weight in self._masked:
            weight.owner.masked_fill_(weight.owner == 0, task)
        self._num_tasks, self._active = task, task
        self._select(task)
        for weight in self._masked:
            weight.protect(task)
        return task

    @torch.no_grad()
    def prune(self, ratio: Optional[float] = None) -> dict[str, int]:
        """Free the smallest-magnitude `ratio` of the active task's units in each layer.

        Units are weights, blocks or output channels (`structure`).  round(ratio * n) of the
        n units the task owns weights in are pruned per layer: the task's weights there are
        set to zero and given back (owner 0).  Units are ranked by the RMS of the task's
        weights in them; ties go to the lower index.  Default ratio: the constructor's for
        this task.  Returns the number of weights pruned per layer name (per weight name,
        `layer.in_proj_weight`, for the projections of an attention layer).
        """
        task = self._require_active("prune")
        ratio = self._ratio(task) if ratio is None else _check_ratio(ratio)
        names = self._module_names()
        pruned = {}
        for weight in self._masked:
            mine = weight.owner == task
            drop = pruned_units(weight.live.detach(), mine, self._unit(weight.live), ratio) & mine
            weight.owner.masked_fill_(drop, 0)
            weight.live.masked_fill_(drop, 0)
            weight.protect(task)
            name = names[id(weight.module)]
            pruned[name if weight.name == "weight" else _key(name, weight.name)] = int(drop.sum())
        return pruned

    def _unit(self, weight: torch.Tensor) -> tuple:
        """The (rows, columns) of a pruning unit in the weight's 2-D view."""
        if self.structure == "weight":
            return 1, 1
        rows, columns = weight.shape[0], weight[0].numel()
        if self.structure == "channel":
            return 1, columns
        return self.block or default_block(rows, columns)

    @torch.no_grad()
    def end_task(self) -> None:
        """Freeze the active task: nothing its outputs depend on changes from now on."""
        task = self._require_active("end_task")
        self._stash()
        for tracked in self._owned:
            tracked.end_task(task)
        self._active = None
        self._sync_frozen()
        for weight in self._masked:
            weight.protect(None)

    def set_task(self, task) -> None:
        """Compute task `task` (1..num_tasks): loads its per-task state; no weight is touched.

        A (B,) integer tensor runs each sample with its own task; that needs
        bias='frozen' and batchnorm='frozen' (no per-task state to switch).
        """
        if isinstance(task, (torch.Tensor, Routing)) and (isinstance(task, Routing) or task.dim() == 1):
            if self._per_task:
                raise ValueError("per-sample tasks need PackNet(..., bias='frozen', batchnorm='frozen'): "
                                 "per-task biases and BatchNorm hold one task at a time")
            weight = next(iter(self._masked), None)
            task = route(task, None if weight is None else weight.live.device)
            present = np.flatnonzero(np.diff(task.offsets.numpy()))
            if present.size:
                self._check_task(int(present.max()))
        else:
            task = self._check_task(task)
        with torch.no_grad():
            self._select(task)

    def usage(self) -> dict[int, int]:
        """Number of masked weights owned by each task (0: free)."""
        counts: dict[int, int] = {}
        for weight in self._masked:
            values, sizes = torch.unique(weight.owner, return_counts=True)
            for value, size in zip(values.tolist(), sizes.tolist()):
                counts[value] = counts.get(value, 0) + size
        return dict(sorted(counts.items()))

    def export(self, task: int) -> nn.Module:
        """A deep copy in eval mode, of plain torch layers, that computes task `task`.

        Masked weights become dense `weight * visible`; per-task biases and BatchNorm
        take that task's values; TaskHeads becomes that task's nn.Linear.
        """
        task = self._check_task(task)
        self._stash()
        names = self._module_names()
        values = {(names[id(t.module)], t.name): t.values[task - 1] for t in self._per_task}
        return plain_copy(self.model, task, values)

    def close(self) -> None:
        """Stop protecting finished tasks (the optimizer hook goes when no PackNet is left)."""
        self._unwatch()

    # ------------------------------------------------------------------ checkpoints

    def save(self, path) -> None:
        """Write the model, owners and per-task state to `path` (atomically)."""
        self._stash()
        checkpoint.write(path, {
            "config": {"prune_ratio": self.prune_ratio, "bias": self.bias, "batchnorm": self.batchnorm,
                       "structure": self.structure,
                       "block": None if self.block is None else list(self.block)},
            "num_tasks": self._num_tasks,
            "active": self._active,
            "task": self._task if isinstance(self._task, int) else None,
            "model": self.model.state_dict(),
            "tracked": {key: tracked.state() for key, tracked in self._keyed().items()},
        })

    @classmethod
    def load(cls, path, model: nn.Module, map_location=None) -> "PackNet":
        """Rebuild a saved PackNet on `model`, a freshly built (unconverted) architecture."""
        if map_location is None:
            first = next(model.parameters(), None)
            map_location = first.device if first is not None else "cpu"
        payload = checkpoint.read(path, map_location)
        net = cls(model, **payload["config"])
        net.model.load_state_dict(payload["model"])
        keyed, stored = net._keyed(), payload["tracked"]
        if set(keyed) != set(stored):
            raise ValueError(f"{path!r} does not match this model: it tracks {sorted(stored)}, "
                             f"the model has {sorted(keyed)}")
        for key, tracked in keyed.items():
            if not tracked.valid_state(stored[key], payload["num_tasks"]):
                raise ValueError(f"{path!r} is not a valid maskops PackNet checkpoint: the state "
                                 f"of {key} does not fit {tracked.live.shape} and "
                                 f"{payload['num_tasks']} tasks")
            tracked.load_state(stored[key])
        net._num_tasks, net._active = payload["num_tasks"], payload["active"]
        for weight in net._masked:
            if weight.owner.numel() and int(weight.owner.max()) > net._num_tasks:
                raise ValueError(f"{path!r} is not a valid maskops PackNet checkpoint: an owner "
                                 f"names task {int(weight.owner.max())} of {net._num_tasks}")
        with torch.no_grad():
            if payload["task"] is not None:
                net._select(payload["task"])
            for weight in net._masked:
                weight.protect(net._active)
        return net

    # ------------------------------------------------------------------ internals

    def _track_whole_tensors(self) -> None:
        """Sort every tensor that is not a masked weight into PerTask or Owned."""
        masked_weights = {id(weight.live) for weight in self._masked}
        head_task = {id(head): t for heads in self._heads for t, head in enumerate(heads.heads, 1)}
        batchnorms = {id(bn) for bn in self._batchnorms}
        seen = set(masked_weights)
        copied = []
        for module_name, module in self.model.named_modules():
            if id(module) in head_task:
                policy, owner = "owned", head_task[id(module)]
            elif id(module) in batchnorms:
                policy, owner = self.batchnorm, 1
            else:
                policy, owner = self.bias, 1
            tensors = list(module.named_parameters(recurse=False))
            if id(module) in batchnorms:
                tensors += [(n, b) for n, b in module.named_buffers(recurse=False) if b is not None]
            for name, tensor in tensors:
                if id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                if policy == "per_task":
                    self._per_task.append(PerTask(module, name))
                else:
                    self._owned.append(Owned(module, name, owner))
                if id(module) not in head_task and id(module) not in batchnorms and \
                        tensor.numel() >= LARGE_UNMASKED:
                    copied.append(f"{module_name}.{name}" if module_name else name)
        if copied:
            fate = ("each task keeps its own copy" if self.bias == "per_task"
                    else "task 1 trains them, later tasks cannot")
            warnings.warn(f"PackNet: {', '.join(copied)} are not masked weights ({fate}; see "
                          f"maskops.conversion_report)", stacklevel=3)

    def _select(self, task) -> None:
        """Make `task` the computed task: per-task state in, layer tasks set."""
        if self._per_task and task != self._task:
            self._stash()
            for tracked in self._per_task:
                tracked.load(task)
        self._task = task
        for module in self._layers + self._heads:
            module.task = task
        self._sync_frozen()

    def _stash(self) -> None:
        """Store the live per-task values of the active task if it is the selected one."""
        if self._training_selected():
            for tracked in self._per_task:
                tracked.store(self._active)

    def _training_selected(self) -> bool:
        return self._active is not None and isinstance(self._task, int) and self._task == self._active

    def _sync_frozen(self) -> None:
        training = self._training_selected()
        for tracked in self._per_task:
            tracked.frozen_task = None if training else self._task
        for bn in self._batchnorms:
            bn.frozen = self._active != 1 if self.batchnorm == "frozen" else not training

    def _restore_all(self) -> None:
        for tracked in self._masked + self._per_task + self._owned:
            tracked.restore()

    def _after_step(self, param_ids: set[int]) -> None:
        with torch.no_grad():
            for tracked in self._masked + self._per_task + self._owned:
                if id(tracked.live) in param_ids:
                    tracked.restore()

    def _require_active(self, action: str) -> int:
        if self._active is None:
            raise RuntimeError(f"{action}() needs an active task; call begin_task() first")
        return self._active

    def _check_task(self, task) -> int:
        if isinstance(task, torch.Tensor) and task.dim() == 0:
            if task.is_floating_point() or task.is_complex() or task.dtype == torch.bool:
                raise TypeError(f"task must be an int or an integer tensor, got a {task.dtype} tensor")
            task = int(task)
        if isinstance(task, bool) or not isinstance(task, numbers.Integral):
            raise TypeError(f"task must be an int, got {type(task).__name__}")
        if not 1 <= task <= self._num_tasks:
            raise ValueError(f"task must be in 1..{self._num_tasks} (tasks begun so far), got {task}")
        return int(task)

    def _ratio(self, task: int) -> float:
        if isinstance(self.prune_ratio, float):
            return self.prune_ratio
        if task > len(self.prune_ratio):
            raise ValueError(f"prune_ratio lists {len(self.prune_ratio)} tasks; pass prune(ratio) "
                             f"for task {task}")
        return self.prune_ratio[task - 1]

    def _module_names(self) -> dict[int, str]:
        return {id(module): name for name, module in self.model.named_modules()}

    def _keyed(self) -> dict[str, Union[PerTask, Owned]]:
        """Per-task and owned tensors by a name stable across builds of the architecture."""
        names = self._module_names()
        return {_key(names[id(t.module)], t.name): t for t in self._per_task + self._owned}


def _key(module_name: str, name: str) -> str:
    return f"{module_name}.{name}" if module_name else name


def pruned_units(weight: torch.Tensor, mine: torch.Tensor, unit: tuple, ratio: float) -> torch.Tensor:
    """Bool, weight-shaped: the round(ratio * n) lowest-RMS units (unit = (rows, columns) of
    the 2-D view (out, rest)) among the n holding a weight of `mine`; ties to the lower index."""
    rows, cols = weight.shape[0], weight[0].numel() if weight.shape[0] else 0
    ur, uc = unit
    grid = (-(-rows // ur), -(-cols // uc))
    pad = (0, grid[1] * uc - cols, 0, grid[0] * ur - rows)

    def per_unit(t: torch.Tensor) -> torch.Tensor:  # (units, ur * uc)
        t = F.pad(t.reshape(rows, cols), pad)
        return t.view(grid[0], ur, grid[1], uc).transpose(1, 2).reshape(grid[0] * grid[1], -1)
    owned = per_unit(mine.to(weight.dtype))
    count_owned = owned.sum(1)
    energy = per_unit(weight.float().square() * mine)
    rms = (energy.sum(1) / count_owned.clamp(min=1)).sqrt()
    candidates = (count_owned > 0).nonzero().flatten()
    count = round(ratio * candidates.numel())
    chosen = candidates[torch.argsort(rms[candidates], stable=True)[:count]]
    drop = torch.zeros(grid[0] * grid[1], dtype=torch.bool, device=weight.device)
    drop[chosen] = True
    full = drop[:, None].expand(-1, ur * uc).reshape(grid[0], grid[1], ur, uc).transpose(1, 2)
    return full.reshape(grid[0] * ur, grid[1] * uc)[:rows, :cols].reshape(weight.shape)


def _check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 <= ratio < 1:
        raise ValueError(f"prune ratio must be a number in [0, 1), got {ratio!r}")
    return float(ratio)


def _check_ratios(prune_ratio):
    if isinstance(prune_ratio, numbers.Real):
        return _check_ratio(prune_ratio)
    return [_check_ratio(r) for r in prune_ratio]
