"""CLI start-up: `python -m mmln.fit --help` and a config typo vs `python -m mmln.score --help`.

    python benchmarks/bench_cli.py [--repeats 5]

Each command runs in a fresh interpreter (the whole process: interpreter start, imports, argparse,
config loading); the figure is the median wall time over `--repeats` runs, all in one run of this
script so the ratio compares like with like on a shared machine. Target: fit answers in < 1 s.
Prints one JSON line, wall and CPU seconds (user + sys) per command and their ratios:
  {"bench": "cli_startup", "fit_help_s", "fit_typo_s", "score_help_s", "fit_help_cpu_s", ..., "fit_help_ratio",
   "fit_typo_ratio", "fit_help_cpu_ratio", "fit_typo_cpu_ratio", ...}
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "score_help": ["-m", "mmln.score", "--help"],
    "fit_help": ["-m", "mmln.fit", "--help"],
    "fit_typo": ["-m", "mmln.fit", "--config", "conf/model/tiny.yaml", "tune.stratgy=lora"],  # exit 2
}


def timed(args: list[str], repeats: int) -> tuple[float, float]:
    """Median (wall seconds, CPU seconds = user + sys of the child) over `repeats` fresh processes.
    CPU time is the steadier figure on a shared machine: it does not count time spent waiting."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    walls, cpus = [], []
    for _ in range(repeats):
        r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        walls.append(time.perf_counter() - t0)
        cpus.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    timed(COMMANDS["score_help"], 1)  # warm the file cache once
    both = {name: timed(cmd, args.repeats) for name, cmd in COMMANDS.items()}
    t = {k: v[0] for k, v in both.items()}
    c = {k: v[1] for k, v in both.items()}
    row = {"bench": "cli_startup", **{f"{k}_s": round(v, 3) for k, v in t.items()},
           **{f"{k}_cpu_s": round(v, 3) for k, v in c.items()},
           "fit_help_ratio": round(t["fit_help"] / t["score_help"], 2),
           "fit_typo_ratio": round(t["fit_typo"] / t["score_help"], 2),
           "fit_help_cpu_ratio": round(c["fit_help"] / c["score_help"], 2),
           "fit_typo_cpu_ratio": round(c["fit_typo"] / c["score_help"], 2), "target_s": 1.0,
           "repeats": args.repeats}
    print(json.dumps(row))
    print(f"fit --help {t['fit_help']:.3f} s, config typo {t['fit_typo']:.3f} s, score --help "
          f"{t['score_help']:.3f} s: x{row['fit_help_ratio']} / x{row['fit_typo_ratio']} wall, "
          f"x{row['fit_help_cpu_ratio']} / x{row['fit_typo_cpu_ratio']} CPU (target < 1 s)")


if __name__ == "__main__":
    main()
