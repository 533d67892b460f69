"""Successive halving at cluster scale, simulated (issue 27, item 4): `mmln.sweeps.simulate` runs the real
rung rules (mmln.halving's synchronous pruner; Optuna's SuccessiveHalvingPruner for `async`) and the
real point order on in-memory Optuna studies, with run times from `mmln.sweeps.simulate.paper_costs`
(7B step times *modelled* from FLOPs, see `modelled_step_s`; overheads assumed), for the paper's grid:
3 strategies x 11 lrs x 3 seeds, 625 steps a run, eta 3, first rung 1/12. Proxy values: seeded
(`random_proxy`): they decide which points survive, not how many (sync), so the figures average
`--repeats` draws of proxies and per-point speeds.

Per (rule, workers): wall time (hours), utilization (busy / workers x wall), the share of worker
time idle while some point waited at a rung barrier (`barrier_idle_frac`) and idle with nothing left
to run (`drain_idle_frac`), training steps / the full grid's, and the full grid's wall on the same
workers. JSON lines on stdout.

python benchmarks/bench_sweep_sim.py [--workers 8 64 512] [--repeats 1] [--full]
  (--full: 8 16 32 64 128 256 512 workers, 3 repeats)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str]) -> int:
    from mmln.config import PAPER_LRS
    from mmln.sweeps.simulate import PAPER_SEEDS, PAPER_STRATEGIES, grid_wall, paper_costs, paper_groups, random_proxy, simulate

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[8, 64, 512])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--noise", type=float, default=0.1, help="lognormal sigma of a point's speed (default 0.1)")
    ap.add_argument("--full", action="store_true")
    a = ap.parse_args(argv)
    workers, repeats = ([8, 16, 32, 64, 128, 256, 512], 3) if a.full else (a.workers, a.repeats)
    groups = paper_groups(list(PAPER_STRATEGIES), list(PAPER_LRS), list(PAPER_SEEDS))
    costs = paper_costs(noise=a.noise)
    t0 = time.time()
    for w in workers:
        grids = [grid_wall(groups, w, costs, seed=r) for r in range(repeats)]
        grid, grid_busy = (sum(g[i] for g in grids) / repeats for i in (0, 1))
        for rule in ("sync", "async"):
            rows = [simulate(groups, w, costs, random_proxy(r), rule=rule, seed=r).row() for r in range(repeats)]
            mean = {k: round(sum(x[k] for x in rows) / repeats, 4) for k in rows[0] if k not in ("rule", "workers")}
            print(json.dumps({"bench": "sweep_sim", "rule": rule, "workers": w, **mean,
                              "grid_wall_h": round(grid / 3600, 3), "grid_worker_h": round(grid_busy / 3600, 2),
                              "repeats": repeats}), flush=True)
    print(json.dumps({"bench": "sweep_sim_run", "points": sum(len(g[2]) for g in groups), "studies": len(groups),
                      "steps_per_run": costs.total_steps, "step_s": {k: round(v, 3) for k, v in costs.step_s.items()},
                      "restart_s": costs.restart_s, "proxy_s": costs.proxy_s, "final_eval_s": costs.final_eval_s,
                      "noise": costs.noise, "sim_s": round(time.time() - t0, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
