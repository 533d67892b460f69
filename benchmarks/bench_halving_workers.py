"""Successive halving with 1, 2 and 3 local workers (`--workers N`) on the tiny halving benchmark
(benchmarks/bench_halving.py's world: the tiny model, 144 synthetic captioning records, 36 steps a
run, Flickr30k CIDEr proxy on the first 12 test images, 11 paper lrs, first rung 1/12, eta 3).

Each worker count runs the same sweep from scratch (its own folder: nothing reused) as a
subprocess `python -m mmln.sweep ... --search halving --workers N`; reported as JSON lines: wall
time, CPU time (user + system of the sweep and all its workers), the load average before and
after, each study's best lr, and whether every worker count picked the same best lrs as 1 worker.
The speed-up is bounded by the machine's free cores (`os.cpu_count()` and the load say how many).

python benchmarks/bench_halving_workers.py [--workers 1,2,3] [--strategies layernorm] [--seeds 1]
(each worker runs on one thread: OMP_NUM_THREADS=1)
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MMLN_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench_halving import METRIC, PROXY_IMAGES, results, world  # noqa: E402


def option(argv: list[str], name: str, default: str) -> str:
    return argv[argv.index(name) + 1] if name in argv else default


def run(root: Path, overrides: list[str], strategies: list[str], seeds: int, workers: int) -> dict:
    """One halving sweep with `workers` workers, from scratch; its wall and CPU seconds."""
    args = [sys.executable, "-m", "mmln.sweep", "--config", str(ROOT / "conf/model/tiny.yaml"),
            "--strategies", *strategies, "--bench", "flickr30k", "--select-metric", METRIC, "--search", "halving",
            "--proxy-bench", "flickr30k", "--proxy-metric", METRIC, "--proxy-overrides", f"eval.limit={PROXY_IMAGES}",
            "--workers", str(workers), *(["--seeds", str(seeds)] if seeds > 1 else []),
            *overrides, f"output_dir={root / f'outputs_w{workers}'}", f"tracking.experiment=bench_workers_{workers}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0, t0 = os.getloadavg()[0], time.time()
    proc = subprocess.run(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{workers} workers: mmln.sweep exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"workers": workers, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2)}


def main(argv: list[str]) -> int:
    from mlflow import MlflowClient

    from mmln.eval.selection import best_lr

    counts = [int(x) for x in option(argv, "--workers", "1,2,3").split(",")]
    strategies = option(argv, "--strategies", "layernorm").split(",")
    seeds = int(option(argv, "--seeds", "1"))
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        overrides = [o for o in world(root) if not o.startswith("output_dir=")]
        for n in counts:
            line = run(root, overrides, strategies, seeds, n)
            found = results(MlflowClient(f"sqlite:///{root / 'mlflow.db'}"), f"bench_workers_{n}")
            line["best_lr"] = {f"{s}-seed{seed}": best_lr({lr: [v] for lr, v in scores.items()})
                               for (s, seed), scores in sorted(found["scores"].items())}
            line["budget_fraction"] = round(found["parent"]["halving/budget_fraction"], 4)
            lines.append(line)
            print(json.dumps(line), flush=True)
    one = lines[0]
    print(json.dumps({"summary": True, "cpu_count": os.cpu_count(),
                      "speedup": {ln["workers"]: round(one["wall_s"] / ln["wall_s"], 2) for ln in lines},
                      "cpu_ratio": {ln["workers"]: round(ln["cpu_s"] / one["cpu_s"], 2) for ln in lines},
                      "same_best_lr_as_1_worker": all(ln["best_lr"] == one["best_lr"] for ln in lines)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
