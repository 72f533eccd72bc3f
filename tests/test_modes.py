"""The shared definitions (csrc/modes.h through maskops/modes.py) are the ones every layer uses."""
import pytest

from maskops import _C, backends
from maskops.modes import GPU_FEW_ROWS, MAX_TASK, TASK_IDS, Mode


def test_modes_come_from_the_native_header():
    assert {m.name: int(m) for m in Mode} == dict(_C.modes)
    assert list(Mode.__members__) == ["dense", "visible", "trainable", "mask", "bits"]
    assert (MAX_TASK, TASK_IDS, GPU_FEW_ROWS) == (255, 256, 64)


def test_triton_kernels_use_the_same_modes():
    pytest.importorskip("triton")
    from maskops.triton import tiles
    assert [tiles.DENSE.value, tiles.VISIBLE.value, tiles.TRAINABLE.value, tiles.MASK.value,
            tiles.BITS.value] == [int(m) for m in Mode]


def test_backend_ids_come_from_the_native_header():
    assert backends.IDS == {name: _C.backends[name] for name in backends.NAMES}
    assert backends.AUTOMATIC == 0 and sorted(backends.IDS.values()) == [1, 2, 3, 4]
