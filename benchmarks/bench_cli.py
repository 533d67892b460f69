"""CLI start-up: `python -m mmln.fit --help` and a config typo vs `python -m mmln.score --help`.

    python benchmarks/bench_cli.py [--repeats 5]

Each command runs in a fresh interpreter (the whole process: interpreter start, imports, argparse,
config loading); the figure is the median wall time over `--repeats` runs, all in one run of this
script so the ratio compares like with like on a shared machine. Target: fit answers in < 1 s.
Prints one JSON line per command and one with the ratios:
  {"bench": "cli_startup", "fit_help_s", "fit_typo_s", "score_help_s", "fit_help_ratio", "fit_typo_ratio", ...}
"""
from __future__ import annotations

import argparse
import json
import os
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


def wall(args: list[str], repeats: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    wall(COMMANDS["score_help"], 1)  # warm the file cache once
    t = {name: wall(cmd, args.repeats) for name, cmd in COMMANDS.items()}
    row = {"bench": "cli_startup", **{f"{k}_s": round(v, 3) for k, v in t.items()},
           "fit_help_ratio": round(t["fit_help"] / t["score_help"], 2),
           "fit_typo_ratio": round(t["fit_typo"] / t["score_help"], 2), "target_s": 1.0,
           "repeats": args.repeats}
    print(json.dumps(row))
    print(f"fit --help {t['fit_help']:.3f} s, config typo {t['fit_typo']:.3f} s, score --help "
          f"{t['score_help']:.3f} s: x{row['fit_help_ratio']} / x{row['fit_typo_ratio']} (target < 1 s)")


if __name__ == "__main__":
    main()
