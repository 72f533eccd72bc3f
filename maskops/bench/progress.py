"""A tqdm progress bar, or a silent stand-in where tqdm is not installed."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def progress(total: int, enabled: bool = True, desc: str = "bench"):
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or not enabled:
        yield _Silent()
        return
    with tqdm(total=total, desc=desc, leave=False) as bar:
        yield bar


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass
