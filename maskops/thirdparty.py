"""torchvision and timm, the optional sources of the models users bring (`pip install
torchvision timm`; the study and the tests import them through here)."""
from __future__ import annotations

import importlib
import sys

import torch

# PyPI's torchvision for torch 2.13 is built against the CUDA torch: beside the CPU build its
# C++ ops do not load, and `import torchvision` then fails registering fake kernels for
# torchvision::nms and ::qnms, whose schemas those ops were to define.  Classification models
# never call them, so the schemas are defined here (without kernels: calling them raises) and
# the import retried, only after that failure, so that a working torchvision defines its own.
_MISSING_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_library = None


def _drop_partial(package: str) -> None:
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]


def _import(package: str):
    """The module; ImportError with the install line when the package is missing."""
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as error:
        if error.name != package:
            raise
        raise ImportError(f"{package} models need {package}: pip install {package}") from None


def torchvision():
    """The torchvision module (see _MISSING_SCHEMAS)."""
    global _library
    try:
        return _import("torchvision")
    except RuntimeError as error:
        if "torchvision::nms does not exist" not in str(error) or _library is not None:
            raise
    _drop_partial("torchvision")
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _MISSING_SCHEMAS:
        _library.define(schema)
    return importlib.import_module("torchvision")


def timm():
    """The timm module (which imports torchvision)."""
    torchvision()
    return _import("timm")


def create_model(spec: str, num_classes: int = 1000) -> torch.nn.Module:
    """A model with random weights from 'torchvision:<name>' or 'timm:<name>' (nothing is
    downloaded)."""
    source, _, name = spec.partition(":")
    if source == "torchvision":
        return torchvision().models.get_model(name, weights=None, num_classes=num_classes)
    if source == "timm":
        return timm().create_model(name, pretrained=False, num_classes=num_classes)
    raise ValueError(f"a model spec is torchvision:<name> or timm:<name>, got {spec!r}")
