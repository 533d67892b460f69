"""Progress bars for long work (tqdm, on stderr, with rate and ETA), silent under MMLN_QUIET=1.

Used by evaluation (one bar per benchmark, in batches), `mmln.data synth` (images) and `mmln.data
check` (records); training shows Lightning's own bar, the sweep prints `point k/n` with an ETA.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable, Optional


def quiet() -> bool:
    return os.environ.get("MMLN_QUIET") == "1"


def bar(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "", unit: str = "it") -> Any:
    """A tqdm bar over `iterable` (or a manual one: `.update(n)`, `.close()`), disabled when quiet."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=quiet(), mininterval=0.5,
                dynamic_ncols=True, leave=True)


def eta(done: int, total: int, elapsed: float) -> str:
    """`"12m 3s"`-style estimate of the time left after `done` of `total` items took `elapsed` s."""
    if done <= 0 or done >= total:
        return "-"
    left = int(elapsed / done * (total - done))
    return f"{left // 3600}h {left % 3600 // 60}m" if left >= 3600 else f"{left // 60}m {left % 60}s"
