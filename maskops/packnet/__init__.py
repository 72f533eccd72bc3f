"""PackNet as a library: `maskops.PackNet`, plus the per-task head and BatchNorm it uses.

    net = maskops.PackNet(model, prune_ratio=0.5)
    for task_data in tasks:
        t = net.begin_task()          # free weights now belong to task t
        train(model)                  # any torch.optim optimizer over model.parameters()
        net.prune()                   # free the smallest weights of task t, per layer
        train(model)                  # retrain what is left
        net.end_task()                # task t is frozen, bit for bit
    net.set_task(2); model(x)         # inference for task 2
"""
from maskops.packnet.modules import TaskBatchNorm1d, TaskBatchNorm2d, TaskBatchNorm3d, TaskHeads
from maskops.packnet.net import PackNet

__all__ = ["PackNet", "TaskHeads", "TaskBatchNorm1d", "TaskBatchNorm2d", "TaskBatchNorm3d"]
