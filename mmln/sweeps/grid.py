"""Grid search: every point of the plan to the end of its run, one after another in this process
(or the one point of a SLURM array task), through the point runner (`mmln.sweeps.point`). A point
that fails is recorded `failed` with its error and the search goes on."""
from __future__ import annotations

import time
import traceback

from mmln.sweeps.plan import Point
from mmln.sweeps.point import SweepRun, point_lock, run_point, say


def run_grid(todo: list[Point], run: SweepRun) -> None:
    """Train and evaluate each point of `todo` (each under its lock), saying the progress and an ETA."""
    from mmln.base.progress import eta

    t0 = time.time()
    for k, p in enumerate(todo):
        say(f"point {k + 1}/{len(todo)}: {p.name} ({time.time() - t0:.0f}s so far, "
            f"ETA {eta(k, len(todo), time.time() - t0)})")
        try:
            with point_lock(p):
                run_point(p, run)
        except Exception as e:
            p.status, p.error = "failed", f"{type(e).__name__}: {e}"
            say(f"[{p.index}] {p.name}: FAILED: {p.error}\n{traceback.format_exc(limit=-3)}")
