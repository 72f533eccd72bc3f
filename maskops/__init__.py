"""maskops: task-masked matmul and convolution for PackNet/DGM-style multi-task networks."""
from maskops import fakes as _fakes  # noqa: F401  (fake kernels of the ops)
from maskops import isa  # noqa: F401  (reads MASKOPS_CPU_ISA)
from maskops.backends import available_backends, bridge as _bridge, use_backend  # noqa: F401
from maskops.ops import masked_conv2d, masked_linear, task_conv2d, task_linear
from maskops.routing import Routing, route
from maskops import nn
from maskops.conversion import conversion_report, convert
from maskops.nn import set_task

__version__ = "0.2.0"

__all__ = [
    "task_linear", "task_conv2d", "masked_linear", "masked_conv2d", "route", "Routing",
    "nn", "convert", "conversion_report", "set_task", "available_backends", "use_backend",
]


def __getattr__(name):
    # Heavier layers load on first use so `import maskops` stays quick.
    if name == "PackNet":
        from maskops.packnet import PackNet
        return PackNet
    if name in ("dgm", "packnet", "serving"):
        import importlib
        return importlib.import_module(f"maskops.{name}")
    raise AttributeError(f"module 'maskops' has no attribute {name!r}")
