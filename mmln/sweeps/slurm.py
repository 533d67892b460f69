"""`--launcher slurm`: a job array script (one task per grid point, each `python -m mmln.sweep ...
--only-index $SLURM_ARRAY_TASK_ID`) and a summary job (`--summarize`); written, never submitted."""
from __future__ import annotations

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


def write_slurm(args, points: list[Point], sweep_id: str, uri: str, experiment: str) -> tuple[Path, Path]:
    base = [sys.executable, "-m", "mmln.sweep", "--config", args.config, "--strategies", *args.strategies,
            "--lrs", *[repr(x) for x in args.lrs], "--bench", ",".join(args.bench) or "none",
            "--select-metric", args.select_metric, "--sweep-id", sweep_id]
    base += ["--variant", args.variant] if args.variant else []
    base += ["--seeds", str(args.seeds)] if args.seeds > 1 else []
    base += ["--final-bench", ",".join(args.final_bench)] if args.final_bench else []
    base += [a for po in args.point_overrides for a in ("--point-overrides", po)]
    over = args.overrides
    out = Path(points[0].cfg.output_dir) / experiment
    setup = [f"cd {shlex.quote(str(Path.cwd()))}",
             "# sqlite suits one node; for many nodes point MLFLOW_TRACKING_URI at an MLflow server (make ui)",
             f"export MLFLOW_TRACKING_URI={shlex.quote(uri)}", "export MMLN_QUIET=1"]
    options = SBATCH_DEFAULTS + list(args.slurm_opt)
    array = out / f"sweep_{sweep_id}.sbatch"
    summary = out / f"sweep_{sweep_id}_summary.sbatch"
    (out / "slurm").mkdir(parents=True, exist_ok=True)
    write_text(array, sbatch_script(
        f"mmln-{experiment}", out / "slurm", options,
        ["# one array task per grid point (index = the point's position in the printed plan)", *setup,
         shlex.join(base + over) + ' --only-index "$SLURM_ARRAY_TASK_ID"'], array=len(points)))
    write_text(summary, sbatch_script(
        f"mmln-{experiment}-summary", out / "slurm", options,
        ["# after the array: best learning rate per strategy (+ --final-bench on the best points)", *setup,
         shlex.join(base + over + ["--summarize"])]))
    return array, summary
