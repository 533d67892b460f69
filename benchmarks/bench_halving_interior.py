"""Does successive halving find an *interior* best learning rate? (issue 27, item 0)

bench_halving.py's grid has its best lr at the largest lr in 7 of 9 cases (36 steps on the tiny
random-init model: nearly every smaller lr scores ~0 CIDEr), so its agreement is mostly trivial.
This bench moves the setting until the full grid's lr curve has its best point inside the grid:

- selection metric = held-out loss: `val/loss` (mean per-sample loss, lower is better) on
  `--n-val` synthetic captioning records drawn with another seed than the training records, at
  the end of the run (the full grid's truth);
- the lr grid is shifted up (`--lrs`, default 11 log-spaced lrs 1e-4 ... 1e-1) so that the largest
  lrs overshoot and the held-out loss rises again; longer runs (`--epochs`) let the mid lrs win;
- the grid is trained once (`python -m mmln.sweep`, validation every `val_every` steps, so every
  point's held-out loss is logged at every rung end of every schedule tried); halving's decisions
  are then *replayed* on those logged proxies with the real synchronous rule
  (`mmln.sweeps.simulate.replay`: the study's real Optuna pruner on an in-memory study). A survivor of
  halving is bit-identical to the grid's point (tests/test_halving.py), so the grid's logged loss at
  a rung's step is the proxy the real halving would see there; `--real-halving` runs the real
  `--search halving --proxy-metric val/loss` once and checks that its survivors equal the replay's.

Proxies tried: held-out loss at the rung ends for each `--first-rungs` schedule (eta 3), and the
held-out *training-step* proxy "last rung only" (the grid itself) as the reference. Reports per
(strategy, seed, schedule): the grid's best lr, whether it is interior (not the first or last lr)
and clearly so (`margin`: how much worse its better neighbour is, relative), halving's pick, the
regret (held-out loss at halving's pick - at the grid's best); and summaries split by edge /
interior optima.

python benchmarks/bench_halving_interior.py [--quick | --full] [--real-halving] [--strategies ...]
  [--seeds N] [--lrs ...] [--epochs E] [--n-train N] [--first-rungs 1/12,1/4,1/3] [--keep DIR]
Default (`make bench`): layernorm x 1 seed x 11 lrs; --quick: 6 of the lrs; --full: 3 strategies x 3
seeds (--seeds 2: two). One thread.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
from functools import reduce
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MMLN_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_halving import sweep  # noqa: E402 (the one way a benchmark runs mmln.sweep)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

METRIC = "val/loss"
BATCH = 8
LRS = [1e-4, 2e-4, 4e-4, 1e-3, 2e-3, 4e-3, 1e-2, 2e-2, 4e-2, 1e-1, 2e-1]


def world(root: Path, n_train: int, n_val: int, epochs: int, val_every: int) -> list[str]:
    from mmln.data.synth import synthesize, text_corpus
    from mmln.data.tokenizer import train_tiny_tokenizer

    none = dict(n_instruct=0, n_mme_per_subtask=0, n_pope_images=0, n_vqa_images=0, n_caption_images=0)
    p = synthesize(root / "data", image_size=64, n_pretrain=n_train, seed=0, **none)
    v = synthesize(root / "val", image_size=64, n_pretrain=n_val, seed=1, **none)  # held out: other scenes
    tok = train_tiny_tokenizer(text_corpus(2000, seed=0), root / "tokenizer", vocab_size=512)
    return [f"model.llm.tokenizer={tok}", f"output_dir={root / 'outputs'}", f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
            "stage=instruct", "data.template=vicuna_v1", "data.num_workers=0",
            f"data.train.files=[{p['cc3m_chat']}]", f"data.train.image_folder={p['cc3m_images']}",
            f"data.val.files=[{v['cc3m_chat']}]", f"data.val.image_folder={v['cc3m_images']}",
            f"train.global_batch_size={BATCH}", f"train.micro_batch_size={BATCH}", f"train.epochs={epochs}",
            f"train.val_every_n_steps={val_every}", "train.warmup_ratio=0.1", "train.save_every_n_steps=1000",
            "train.log_every_n_steps=10", "analysis.grad_every_n_steps=0", "analysis.similarity=false",
            f"eval.batch_size={BATCH}"]  # the halving proxy's val/loss batches as the Trainer's validation


def curves(client, experiment: str) -> dict:
    """(strategy, seed) -> {lr: {step: held-out loss}} of the experiment's finished or paused points."""
    exp = client.get_experiment_by_name(experiment)
    out: dict = {}
    for r in client.search_runs([exp.experiment_id], max_results=5000):
        if r.data.tags.get("kind"):
            continue
        key = (r.data.tags["strategy"], int(r.data.params["train.seed"]))
        hist = client.get_metric_history(r.info.run_id, METRIC)
        # Lightning logs the validation that follows optimizer step k at step k - 1 (checked against
        # the real halving's proxies by --real-halving)
        out.setdefault(key, {})[float(r.data.tags["lr"])] = {m.step + 1: m.value for m in hist}
    return out


def margin(final: dict[float, float], best: float) -> float:
    """How much worse (relative held-out loss) the better of the best lr's neighbours is; 0 at an edge."""
    lrs = sorted(final)
    i = lrs.index(best)
    if i in (0, len(lrs) - 1):
        return 0.0
    nb = min(final[lrs[i - 1]], final[lrs[i + 1]])
    return (nb - final[best]) / abs(final[best])


def cases(grid: dict, total: int, schedules: list[str], eta: int) -> list[dict]:
    from mmln.sweeps.simulate import replay

    lines = []
    n_lrs = max(len(v) for v in grid.values())
    for (strategy, seed), by_lr in sorted(grid.items()):
        if len(by_lr) < n_lrs:  # a (strategy, seed) of another call kept in --keep's folder
            continue
        lrs = sorted(by_lr)
        final = {lr: by_lr[lr].get(total, math.nan) for lr in lrs}
        finite = {lr: v for lr, v in final.items() if not math.isnan(v)}
        best = min(finite, key=lambda lr: (finite[lr], -lr))  # the sweep's tie rule: the higher lr
        for first in schedules:
            steps = schedule(first, total, eta)
            proxies = {lr: {s: by_lr[lr].get(s, math.nan) for s in steps[:-1]} for lr in lrs}
            survivors = replay(proxies, steps, eta, maximize=False)
            picked = min(survivors[-1], key=lambda lr: (final[lr], -lr))
            lines.append({"bench": "halving_interior", "strategy": strategy, "seed": seed, "first_rung": first,
                          "rung_steps": steps, "grid_best_lr": best, "grid_best_loss": round(final[best], 4),
                          "interior": lrs.index(best) not in (0, len(lrs) - 1), "margin": round(margin(final, best), 4),
                          "halving_lr": picked, "loss_at_halving_lr": round(final[picked], 4),
                          "regret": round(final[picked] - final[best], 4), "same": picked == best,
                          "rung_survivors": [sorted(s) for s in survivors],
                          "curve": {f"{lr:g}": round(v, 4) for lr, v in final.items()}})
    return lines


def schedule(spec: str, total: int, eta: int) -> list[int]:
    """'1/12': mmln's rungs for that first rung; '6+18': decisions at steps 6 and 18 only (the 2 left
    after them train to the end: halving that never decides the last pair before the end)."""
    from mmln.sweeps.rungs import fraction, rung_steps

    return [int(x) for x in spec.split("+")] + [total] if "+" in spec else rung_steps(total, fraction(spec), eta)


def summaries(lines: list[dict], min_margin: float) -> list[dict]:
    out = []
    for first in dict.fromkeys(x["first_rung"] for x in lines):
        rows = [x for x in lines if x["first_rung"] == first]
        for kind, sel in (("all", rows), ("edge", [x for x in rows if not x["interior"]]),
                          ("interior", [x for x in rows if x["interior"]]),
                          (f"interior_margin>={min_margin}", [x for x in rows if x["interior"] and x["margin"] >= min_margin])):
            if not sel:
                out.append({"bench": "halving_interior_summary", "first_rung": first, "optima": kind, "cases": 0})
                continue
            regrets = [x["regret"] for x in sel]
            out.append({"bench": "halving_interior_summary", "first_rung": first, "proxy": "held-out loss at rung ends",
                        "optima": kind, "cases": len(sel), "same_best_lr": sum(x["same"] for x in sel),
                        "mean_regret": round(sum(regrets) / len(regrets), 4), "max_regret": round(max(regrets), 4),
                        "steps_fraction": steps_fraction(sel[0]["rung_steps"], len(sel[0]["curve"]), 3)})
    return out


def steps_fraction(steps: list[int], n: int, eta: int) -> float:
    """Training steps of synchronous halving over n points / the full grid's (survivors continue)."""
    alive, spent, prev = n, 0, 0
    for s in steps:
        spent += alive * (s - prev)
        prev, alive = s, math.ceil(alive / eta)
    return round(spent / (n * steps[-1]), 4)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="6 lrs (every other one)")
    ap.add_argument("--full", action="store_true", help="3 strategies x 3 seeds")
    ap.add_argument("--strategies", nargs="+", default=None)
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--lrs", nargs="+", type=float, default=LRS)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--n-train", type=int, default=144)
    ap.add_argument("--n-val", type=int, default=24)
    ap.add_argument("--first-rungs", default="1/12,1/4,1/3,6+18",
                    help="schedules: a first rung (mmln's rungs) or decision steps joined by + (default %(default)s)")
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--min-margin", type=float, default=0.01)
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="work in DIR and keep it: a second call reuses the trained grid (the sweep skips done points)")
    ap.add_argument("--real-halving", action="store_true", help="also run the real halving (first rung: the first)")
    ap.add_argument("--real-strategies", nargs="+", default=None, help="--real-halving for these strategies only")
    a = ap.parse_args(argv)
    a.strategies = a.strategies or (["layernorm", "lora", "finetune"] if a.full else ["layernorm"])
    a.seeds = a.seeds or (3 if a.full else 1)
    a.lrs = a.lrs[::2] if a.quick and a.lrs == LRS else a.lrs
    return a


def main(argv: list[str]) -> int:
    from mlflow import MlflowClient

    a = parse(argv)
    total = a.n_train // BATCH * a.epochs
    schedules = a.first_rungs.split(",")
    ends = {s for f in schedules for s in schedule(f, total, a.eta)}
    val_every = reduce(math.gcd, ends | {a.n_train // BATCH})  # every rung end, and each epoch's end
    with contextlib.ExitStack() as stack:
        root = Path(a.keep) if a.keep else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        overrides = world(root, a.n_train, a.n_val, a.epochs, val_every)
        common = ["--config", str(ROOT / "conf/model/tiny.yaml"), "--strategies", *a.strategies, "--lrs",
                  *map(repr, a.lrs), "--bench", "none", "--select-metric", METRIC] + (
                  ["--seeds", str(a.seeds)] if a.seeds > 1 else [])
        grid_s = sweep(common + [*overrides, "tracking.experiment=grid"])
        client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        grid = curves(client, "grid")
        lines = cases(grid, total, schedules, a.eta)
        for line in lines + summaries(lines, a.min_margin):
            print(json.dumps(line), flush=True)
        run = {"bench": "halving_interior_run", "strategies": a.strategies, "seeds": a.seeds, "lrs": a.lrs,
               "steps_per_run": total, "n_train": a.n_train, "n_val": a.n_val, "val_every": val_every,
               "wall_s_grid": round(grid_s, 1)}
        if a.real_halving:
            common = [x for x in common if x not in a.strategies] if a.real_strategies else common
            common[common.index("--strategies") + 1:common.index("--strategies") + 1] = a.real_strategies or []
            run |= real_halving(client, common, overrides, schedules[0], a.eta, lines, grid, total)  # a fraction
        print(json.dumps(run), flush=True)
    return 0


def real_halving(client, common: list[str], overrides: list[str], first: str, eta: int, lines: list[dict],
                 grid: dict, total: int) -> dict:
    """The real `--search halving --proxy-metric val/loss`: its finishers against the replay's survivors,
    and their final held-out loss against the grid's at the same point (a survivor should be
    bit-identical to it)."""
    # its own experiment (and run folders) per grid and schedule: a halving sweep over another grid in the
    # same experiment would meet the points of the first one
    name = "halving_" + hashlib.sha256(" ".join(common + [first]).encode()).hexdigest()[:8]
    wall = sweep(common + ["--search", "halving", "--first-rung", first, "--eta", str(eta), "--proxy-metric", METRIC,
                           "--proxy-overrides", "eval.limit=null", *overrides, f"tracking.experiment={name}"])
    exp = client.get_experiment_by_name(name)
    finished: dict = {}
    for r in client.search_runs([exp.experiment_id], "tags.`halving/state` = 'finished'", max_results=5000):
        key = (r.data.tags["strategy"], int(r.data.params["train.seed"]))
        finished.setdefault(key, {})[float(r.data.tags["lr"])] = r.data.metrics.get(METRIC)
    checked = [x for x in lines if x["first_rung"] == first and (x["strategy"], x["seed"]) in finished]
    final = {f"{s}-seed{seed}-lr{lr:g}": [round(v, 4), round(grid[(s, seed)][lr][total], 4)]
             for (s, seed), by_lr in finished.items() for lr, v in by_lr.items()}
    return {"real_halving_first_rung": first, "real_studies": len(checked),
            "real_survivors_equal_replay": all(sorted(finished[(x["strategy"], x["seed"])]) == x["rung_survivors"][-1]
                                               for x in checked),
            "real_final_loss_vs_grid": final,
            "real_final_loss_equals_grid": all(a == b for a, b in final.values()), "wall_s_real_halving": round(wall, 1)}


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
