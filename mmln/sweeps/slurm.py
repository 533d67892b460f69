"""`--launcher slurm`: a job array script and a summary job (`--summarize`); written, never submitted.
A grid's array has one task per grid point (`python -m mmln.sweep ... --only-index
$SLURM_ARRAY_TASK_ID`); a halving sweep's has `--workers N` tasks, each a worker on the sweep's
study (`... --worker`, `mmln.sweeps.workers`) in the storage every node shares (`--study-storage`:
PostgreSQL, or a journal file on a shared file system)."""
from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path
from typing import Optional

from mmln.base.io import write_text
from mmln.sweeps.plan import Point

SBATCH_DEFAULTS = ["--gres=gpu:1", "--cpus-per-task=8"]


def sbatch_script(job: str, log_dir: Path, options: list[str], commands: list[str], array: Optional[int] = None) -> str:
    log = f"{log_dir.resolve()}/%x-" + ("%A_%a.out" if array else "%j.out")  # sbatch does not create the folder
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job}", f"#SBATCH --output={log}"]
    lines += [f"#SBATCH --array=0-{array - 1}"] if array else []
    lines += [f"#SBATCH {o}" for o in options]
    return "\n".join(lines + ["set -euo pipefail", *commands]) + "\n"


def halving_args(args, storage: str) -> list[str]:
    """The options a halving worker repeats (the study's settings and where it is)."""
    return ["--search", "halving", "--eta", str(args.eta), "--halving-rule", args.halving_rule,
            "--first-rung", repr(args.first_rung), "--proxy-bench", args.proxy_bench, "--proxy-metric",
            args.proxy_metric, "--proxy-overrides", args.proxy_overrides, "--study-storage", storage,
            "--heartbeat", f"{args.heartbeat:g}", "--heartbeat-timeout", f"{args.heartbeat_timeout:g}"]


def array_task(args, points: list[Point], storage: Optional[str]) -> tuple[list[str], int, str]:
    """What each array task adds to the sweep's command, how many tasks, and the comment above."""
    if storage is None:
        return ['--only-index "$SLURM_ARRAY_TASK_ID"'], len(points), \
            "# one array task per grid point (index = the point's position in the printed plan)"
    n = args.workers or default_workers(len(points), args.eta)
    return ["--worker"], n, f"# {n} workers on the halving study: each takes the next point it can claim"


def default_workers(n_points: int, eta: int) -> int:
    """A halving array's size when `--workers` is not given: the first rung's points over eta."""
    return max(1, math.ceil(n_points / eta))


def write_slurm(args, points: list[Point], sweep_id: str, uri: str, experiment: str,
                storage: Optional[str] = None) -> tuple[Path, Path]:
    """The array (`storage`: a halving sweep's study storage; None: a grid) and the summary job."""
    base = [sys.executable, "-m", "mmln.sweep", "--config", args.config, "--strategies", *args.strategies,
            "--lrs", *[repr(x) for x in args.lrs], "--bench", ",".join(args.bench) or "none",
            "--select-metric", args.select_metric, "--sweep-id", sweep_id]
    base += ["--variant", args.variant] if args.variant else []
    base += ["--seeds", str(args.seeds)] if args.seeds > 1 else []
    base += ["--final-bench", ",".join(args.final_bench)] if args.final_bench else []
    base += [a for po in args.point_overrides for a in ("--point-overrides", po)]
    base += halving_args(args, storage) if storage else []
    over = args.overrides
    out = Path(points[0].cfg.output_dir) / experiment
    setup = [f"cd {shlex.quote(str(Path.cwd()))}",
             "# sqlite suits one node; for many nodes point MLFLOW_TRACKING_URI at an MLflow server (make ui)",
             f"export MLFLOW_TRACKING_URI={shlex.quote(uri)}", "export MMLN_QUIET=1"]
    options = SBATCH_DEFAULTS + list(args.slurm_opt)
    array = out / f"sweep_{sweep_id}.sbatch"
    summary = out / f"sweep_{sweep_id}_summary.sbatch"
    (out / "slurm").mkdir(parents=True, exist_ok=True)
    task, n, comment = array_task(args, points, storage)
    write_text(array, sbatch_script(f"mmln-{experiment}", out / "slurm", options,
                                    [comment, *setup, " ".join([shlex.join(base + over), *task])], array=n))
    write_text(summary, sbatch_script(
        f"mmln-{experiment}-summary", out / "slurm", options,
        ["# after the array: best learning rate per strategy (+ --final-bench on the best points)", *setup,
         shlex.join(base + over + ["--summarize"])]))
    return array, summary
