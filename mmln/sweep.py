"""python -m mmln.sweep --config CFG [--lrs 1e-3 1e-4 ...] [--strategies layernorm finetune ...] [key=value ...]

Expands a learning-rate x strategy grid (default: the paper's 11 learning rates, `mmln.config.PAPER_LRS`, for the
config's own strategy) into one run per point, `tune.strategy=S train.lr=X run_name=S-lrX`
(`--variant V` prefixes run names with `V-` and tags the runs `variant=V`, so that a data-type or
vision-encoder study can share an experiment with the reference sweep). Each point is trained
with `mmln.fit` and then evaluated with `mmln.evaluate` on `--bench` (default `flickr30k` only:
the paper picks every strategy's learning rate by Flickr30k CIDEr, and the other benchmarks are
only needed at the chosen rate: `--final-bench mme,pope,vqav2,coco` evaluates them on each
strategy's best point after the sweep).

Idempotent. A point is identified by its resolved config (`config_hash`: SHA-256 of the config
without the volatile keys in `VOLATILE`), stored as the MLflow tag `config_hash` and in the run
directory. A re-run skips a point that has a FINISHED run with that hash holding the selection
metric and every requested benchmark; evaluates only what is missing when training finished; and
otherwise trains it, which continues an interrupted run from `checkpoints/last.ckpt` (fit's
`resume=auto`). A run directory that holds a run of a *different* config is moved aside to
`<run>.replaced-<hash>` first (never overwritten, never resumed from; the sweep lists every such
move before it starts, `--dry-run` lists them without moving, and the old MLflow run gets a
`moved_to` tag). A failing point is recorded
FAILED (fit does that), logged, and the sweep goes on; the exit code is then 1, listing them.

Tracking: the store and the experiment are created once, up front (sqlite dislikes concurrent
creation), then points run sequentially in this process. A parent MLflow run `sweep-<id>` (tags
`kind=sweep`, `sweep_id`) records the grid; child runs carry the same `sweep_id` and
`mlflow.parentRunId` from their creation on (`fit(..., sweep=SweepContext(...))`; the tag schema is
`mmln.tracking.Tags`). At the end the parent gets, per strategy,
the best learning rate by `--select-metric` (`mmln.selection.best_lr`: the highest mean over the
training seeds, `--seeds N` training each point with train.seed, +1, ..., +N-1 as `...-seed<S>`
runs; a tie goes to the higher lr): metrics
`best_lr/<strategy>` and `best_<metric>/<strategy>`, tags `best_lr/<strategy>` and
`best_run/<strategy>` (tags and metrics, not params: MLflow params are immutable, and a re-run
that completes a failed point may change the winner). The sweep id is a hash of the grid's
configs, so re-running the same sweep reuses the same parent run (`--sweep-id` to choose one).

`--launcher slurm` writes `outputs/<experiment>/sweep_<id>.sbatch` (a job array, one task per
point, each `python -m mmln.sweep ... --only-index $SLURM_ARRAY_TASK_ID`) and
`sweep_<id>_summary.sbatch` (`--summarize`: best learning rates, `--final-bench`), creates the
store, experiment and parent run, prints the `sbatch` line, and runs nothing.

`--search halving` (mmln.halving) trains the same points by successive halving instead: every
point to a first rung (`--first-rung`, 1/12 of the run), scored by a cheap proxy (`--proxy-metric`),
the best 1/`--eta` continued from their checkpoints, rung after rung, by Optuna's GridSampler and
a synchronous halving pruner (`--halving-rule async`: Optuna's SuccessiveHalvingPruner) on an RDB
study (`--study-storage`); survivors end bit-identical to the grid's runs and get the `--bench`
evaluation; the parent records the steps spent.

Exit codes: 0 every point done (or pruned); 1 some point failed (listed); 2 a config problem, before any run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from mmln.config import PAPER_LRS, ConfigError, load_config
from mmln.halving import fraction
from mmln.io import write_text
from mmln.locks import Busy, exclusive
from mmln.tracking import SweepContext, Tags, Tracker

VOLATILE = ("resume", "quiet", "data.num_workers", "debug")  # keys that do not change what a run computes
DEFAULT_BENCH = ["flickr30k"]
DEFAULT_METRIC = "eval/flickr30k_cider"


# ------------------------------------------------------------------------------------ the grid
@dataclass
class Point:
    index: int
    strategy: str
    lr: float
    name: str
    overrides: list[str]
    cfg: Any
    hash: str
    run_dir: Path
    variant: str = ""
    seed: Optional[int] = None  # --seeds: this point's train.seed (None: the config's own, one seed)
    status: str = "pending"  # skipped | trained | evaluated | done (--summarize) | failed | missing
    run_id: Optional[str] = None
    value: Optional[float] = None
    error: str = ""


def config_hash(cfg) -> str:
    """SHA-256 (16 hex) of the resolved config without the `VOLATILE` keys."""
    data = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    for key in VOLATILE:
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node.get(p) or {}
        node.pop(leaf, None)
    text = OmegaConf.to_yaml(OmegaConf.create(json.loads(json.dumps(data, sort_keys=True, default=str))))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_point_overrides(specs: list[str]) -> list[tuple[dict[str, str], list[str]]]:
    """`"lr=1e-3,strategy=lora:debug.fail_at_step=1 train.max_steps=2"` -> ({lr, strategy}, [overrides])."""
    out = []
    for spec in specs:
        sel, sep, rest = spec.partition(":")
        selector = dict(s.split("=", 1) for s in sel.split(",") if "=" in s)
        if not sep or not rest.split() or set(selector) - {"lr", "strategy"} or not selector:
            raise ConfigError(f"--point-overrides {spec!r}: expected 'lr=X[,strategy=S]:key=value [key=value ...]'")
        out.append((selector, rest.split()))
    return out


def _matches(selector: dict[str, str], strategy: str, lr: float) -> bool:
    if "strategy" in selector and selector["strategy"] != strategy:
        return False
    return "lr" not in selector or math.isclose(float(selector["lr"]), lr, rel_tol=1e-9)


def plan(config: str, strategies: list[str], lrs: list[float], overrides: list[str],
         point_overrides: list[str] = (), variant: str = "", seeds: list[int] = ()) -> list[Point]:
    """Every grid point with its loaded, validated config (so a bad key fails before any run).
    `seeds`: each (strategy, lr) once per training seed, `train.seed=S`, named `...-seedS`."""
    from mmln.fit import experiment_name
    from mmln.tuning import REGISTRY

    unknown = [s for s in strategies if s not in REGISTRY]
    if unknown:
        raise ConfigError(f"unknown strategy {', '.join(unknown)}; registered: {', '.join(REGISTRY)}")
    per_point = parse_point_overrides(list(point_overrides))
    points, experiments = [], set()
    for strategy in strategies:
        for lr in lrs:
            for seed in list(seeds) or [None]:
                name = f"{variant + '-' if variant else ''}{strategy}-lr{lr:g}" + (f"-seed{seed}" if seed is not None else "")
                extra = [o for sel, ovr in per_point if _matches(sel, strategy, lr) for o in ovr]
                ovr = [*overrides, f"tune.strategy={strategy}", f"train.lr={lr!r}", f"run_name={name}",
                       *([f"train.seed={seed}"] if seed is not None else []), *extra]
                cfg = load_config(config, ovr)
                experiments.add(experiment_name(cfg, config))
                points.append(Point(len(points), strategy, lr, name, ovr, cfg, config_hash(cfg),
                                    Path(cfg.output_dir) / experiment_name(cfg, config) / name, variant, seed))
    if len(experiments) > 1:
        raise ConfigError(f"the points of one sweep must share one experiment, got {sorted(experiments)}")
    return points


def check_select(metric: str, benches: list[str]) -> None:
    if metric.startswith("eval/") and not any(metric.startswith(f"eval/{b}") for b in benches):
        raise ConfigError(f"--select-metric {metric} comes from no benchmark in --bench {','.join(benches) or 'none'}: "
                          f"add its benchmark, or select by another metric (e.g. eval/<bench>_...)")


def has_bench(metrics: dict[str, float], bench: str) -> bool:
    return any(k.startswith(f"eval/{bench}") for k in metrics)


# ---------------------------------------------------------------------------------- tracking
def sweep_id_of(points: list[Point], benches: list[str]) -> str:
    return hashlib.sha256(json.dumps([sorted(p.hash for p in points), benches]).encode()).hexdigest()[:8]


def sweep_name(model: str, strategies: list[str], n_lrs: int, variant: str = "") -> str:
    """What the parent run is called in the dashboard: `<model> <strategies> x <n> lrs`."""
    return f"{model}{' ' + variant if variant else ''} {','.join(strategies)} x {n_lrs} lr{'s' if n_lrs != 1 else ''}"


def parent_run(client, exp_id: str, sweep_id: str, create: bool, params: dict[str, Any], tags: dict[str, str]):
    runs = client.runs([exp_id], f"tags.{Tags.SWEEP_ID} = '{sweep_id}' and tags.{Tags.KIND} = 'sweep'", limit=1)
    if runs or not create:
        return runs[0].info.run_id if runs else None
    return client.start_run(exp_id, tags.pop("name", f"sweep-{sweep_id}"),
                            {Tags.KIND: "sweep", Tags.SWEEP_ID: sweep_id, **tags}, params)


# ------------------------------------------------------------------------------------ running
def decide(p: Point, client, exp_id: str, benches: list[str], metric: str) -> tuple[str, Any]:
    """skip | evaluate | train, and the FINISHED run when there is one."""
    run = client.finished_run(exp_id, p.hash)
    if run is None:
        return "train", None
    m = run.data.metrics
    if metric in m and all(has_bench(m, b) for b in benches):
        return "skip", run
    id_file = p.run_dir / "mlflow_run_id"
    same_dir = id_file.is_file() and id_file.read_text().strip() == run.info.run_id
    if same_dir and (p.run_dir / "trainable.safetensors").is_file():
        return "evaluate", run
    return "train", None


def displaced(p: Point) -> Optional[str]:
    """When the point's run dir holds a run of *another* config: what training the point moves aside
    (`<dir> -> <dir>.replaced-<hash>`, naming the run), else None."""
    f = p.run_dir / "config_hash"
    old = f.read_text().strip() if f.is_file() else (
        config_hash(OmegaConf.load(p.run_dir / "config.yaml")) if (p.run_dir / "config.yaml").is_file() else None)
    if old is None or old == p.hash:
        return None
    id_file = p.run_dir / "mlflow_run_id"
    run = id_file.read_text().strip() if id_file.is_file() else "?"
    done = "finished" if (p.run_dir / "trainable.safetensors").is_file() else "unfinished"
    return f"{p.run_dir} ({done} run {run}, config {old[:8]}) -> {aside_dir(p, old)}"


def aside_dir(p: Point, old_hash: str) -> Path:
    return p.run_dir.with_name(f"{p.run_dir.name}.replaced-{old_hash[:8]}")


def prepare_run_dir(p: Point, client=None) -> None:
    """Write the point's hash into its run dir; move a run dir of another config aside first (said
    up front by `main`, listed by `--dry-run`; its MLflow run is tagged `moved_to`)."""
    f = p.run_dir / "config_hash"
    old = f.read_text().strip() if f.is_file() else (
        config_hash(OmegaConf.load(p.run_dir / "config.yaml")) if (p.run_dir / "config.yaml").is_file() else None)
    if old is not None and old != p.hash:
        aside = aside_dir(p, old)
        id_file = p.run_dir / "mlflow_run_id"
        shutil.rmtree(aside, ignore_errors=True)
        p.run_dir.rename(aside)
        _say(f"{p.name}: {p.run_dir} held a run of another config; moved to {aside}")
        if client is not None and (aside / id_file.name).is_file():
            try:
                client.set_tags((aside / id_file.name).read_text().strip(), {Tags.MOVED_TO: str(aside)})
            except Exception:  # the old run is not in this store: the files moved all the same
                pass
    p.run_dir.mkdir(parents=True, exist_ok=True)
    write_text(f, p.hash + "\n")


def point_tags(p: Point, parent_id: Optional[str]) -> dict[str, str]:
    """What the sweep adds to fit's tags (model, strategy, stage, lr, data_subset, sweep_id, ...)."""
    tags = {Tags.CONFIG_HASH: p.hash, Tags.SWEEP_POINT: str(p.index)}
    tags |= {Tags.VARIANT: p.variant} if p.variant else {}
    return tags | ({Tags.PARENT: parent_id} if parent_id else {})


def adopt(client, run_id: str, parent_id: Optional[str], sweep_id: str) -> None:
    """A reused point shows under this sweep's parent too: it becomes the parent's child (its
    earlier sweeps stay listed in the `sweeps` tag)."""
    if not parent_id:
        return
    tags = client.get_run(run_id).data.tags
    seen = [s for s in tags.get(Tags.SWEEPS, tags.get(Tags.SWEEP_ID, "")).split(",") if s]
    client.set_tags(run_id, {Tags.SWEEPS: ",".join(dict.fromkeys(seen + [sweep_id])), Tags.PARENT: parent_id})


def run_point(p: Point, client, exp_id: str, parent_id: Optional[str], sweep_id: str, benches: list[str],
              metric: str, config_path: str, stop_at=None, extra_tags: Optional[dict[str, str]] = None) -> None:
    """Train (or continue) and evaluate one point. `stop_at` (successive halving): pause the
    training after `stop_at(total_steps)` steps; the point is then `paused`, not evaluated."""
    from mmln.evaluate import evaluate
    from mmln.fit import fit

    action, run = decide(p, client, exp_id, benches, metric)
    tags = point_tags(p, parent_id) | (extra_tags or {})
    if action == "skip":
        p.status, p.run_id = "skipped", run.info.run_id
        _say(f"[{p.index}] {p.name}: done before (run {p.run_id}), skipped")
        adopt(client, p.run_id, parent_id, sweep_id)
        return
    if action == "train":
        _say(f"[{p.index}] {p.name}: training")
        prepare_run_dir(p, client)
        try:
            # the run carries the point's tags from its creation on (a continued one gets them again)
            result = fit(p.cfg, config_path, stop_at=stop_at, sweep=SweepContext(sweep_id, tags))
            p.run_id = result.run_id
        finally:
            id_file = p.run_dir / "mlflow_run_id"
            p.run_id = p.run_id or (id_file.read_text().strip() if id_file.is_file() else None)
        if result.paused_at is not None:
            p.status = "paused"
            return
    else:
        p.run_id = run.info.run_id
        adopt(client, p.run_id, parent_id, sweep_id)
    metrics = client.get_run(p.run_id).data.metrics
    missing = [b for b in benches if not has_bench(metrics, b)]
    if missing:
        _say(f"[{p.index}] {p.name}: evaluating {','.join(missing)}")
        try:
            evaluate(p.cfg, str(p.run_dir / "trainable.safetensors"), missing, p.run_dir / "eval", run_id=p.run_id)
        except Exception as e:
            client.set_tags(p.run_id, {Tags.EVAL_ERROR: f"{type(e).__name__}: {e}"[:5000]})
            raise
    p.status = "trained" if action == "train" else "evaluated"


def lr_scores(points: list[Point]) -> dict[str, dict[float, list[float]]]:
    """strategy -> lr -> the metric of each of its seeds' points (those that have it)."""
    out: dict[str, dict[float, list[float]]] = {}
    for p in points:
        out.setdefault(p.strategy, {}).setdefault(p.lr, [])
        if p.value is not None:
            out[p.strategy][p.lr].append(p.value)
    return out


def summarize(points: list[Point], client, exp_id: str, metric: str) -> dict[str, Point]:
    """Fill every point's run and metric from MLflow; the best point per strategy (`pick_best`)."""
    for p in points:
        run = client.finished_run(exp_id, p.hash)
        if run is not None and metric in run.data.metrics:
            p.run_id, p.value = run.info.run_id, run.data.metrics[metric]
            p.status = "done" if p.status == "pending" else p.status
        elif p.status not in ("failed", "pruned"):  # pruned: successive halving stopped it on purpose
            cut = client.search_runs([exp_id], f"tags.config_hash = '{p.hash}' and tags.`halving/state` = 'pruned'",
                                     max_results=1)  # by an earlier halving sweep (--summarize)
            p.status = "pruned" if cut else "missing"
            p.run_id = cut[0].info.run_id if cut else p.run_id
            p.error = None if cut else p.error or f"no FINISHED run with {metric}"
    return pick_best(points)


def pick_best(points: list[Point]) -> dict[str, Point]:
    """Per strategy, a point of its best learning rate (`mmln.selection.best_lr`: the highest mean
    over seeds, tie: the higher lr); of that lr's seeds, the best-scoring one."""
    from mmln.selection import best_lr

    best = {}
    for strategy, scores in lr_scores(points).items():
        lr = best_lr(scores)
        if lr is not None:
            at = [p for p in points if p.strategy == strategy and p.lr == lr and p.value is not None
                  and not math.isnan(p.value)]
            best[strategy] = max(at, key=lambda p: p.value)
    return best


def log_summary(client, parent_id: str, points: list[Point], best: dict[str, Point], metric: str) -> None:
    from mmln.selection import mean_ci

    m: dict[str, float] = {}
    scores, means = lr_scores(points), {}
    for s, p in best.items():
        means[s], half, n = mean_ci(scores[s][p.lr])
        m |= {f"best_lr/{s}": p.lr, f"best_{metric}/{s}": means[s]}
        m |= {f"best_{metric}_ci95/{s}": half, f"best_n_seeds/{s}": n} if n > 1 else {}
        client.set_tags(parent_id, {f"best_lr/{s}": f"{p.lr:g}", f"best_run/{s}": p.run_id})
    if best:
        top = max(best, key=lambda s: (means[s], best[s].lr))
        m[f"best_{metric}"] = means[top]
    failed = [p for p in points if p.status in ("failed", "missing")]
    m |= {"sweep/n_points": len(points), "sweep/n_failed": len(failed)}
    client.log_metrics(parent_id, m)
    rows = [{"index": p.index, "strategy": p.strategy, "lr": p.lr, "seed": p.seed, "run_name": p.name, "run_id": p.run_id,
             "config_hash": p.hash, "status": p.status, metric: p.value, "error": p.error} for p in points]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.json"
        path.write_text(json.dumps({"select_metric": metric, "points": rows,
                                    "best": {s: p.index for s, p in best.items()}}, indent=1))
        client.log_artifact(parent_id, str(path))
        client.log_artifacts(parent_id, str(comparison(points, best, metric, Path(tmp) / "comparison")), "comparison")


def comparison(points: list[Point], best: dict[str, Point], metric: str, out: Path) -> Path:
    """The parent's at-a-glance view: `comparison.md` (strategies x learning rates, Table A1's
    shape, best per strategy in bold, each cell's run) and the report's LR-curve PNG."""
    from mmln.report import Run, lr_curves

    out.mkdir(parents=True, exist_ok=True)
    lrs = sorted({p.lr for p in points}, reverse=True)
    strategies = list(dict.fromkeys(p.strategy for p in points))
    lines = [f"# {metric} per strategy x learning rate", "", "| strategy | " + " | ".join(f"{x:g}" for x in lrs) + " |",
             "|---|" + "---|" * len(lrs)]
    from mmln.selection import mean_ci

    scores = lr_scores(points)
    for s in strategies:
        cells = []
        for lr in lrs:
            at = [q for q in points if q.strategy == s and q.lr == lr]
            mean, half, n = mean_ci(scores.get(s, {}).get(lr, []))
            v = "-" if n == 0 else f"{mean:.4g}" + (f" ± {half:.2g}" if n > 1 else "")
            v = "pruned" if n == 0 and at and all(q.status == "pruned" for q in at) else v
            cells.append(f"**{v}**" if s in best and best[s].lr == lr else v)
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "mean ± 95% CI over seeds where there are several; pruned = stopped by successive halving"]
    lines += ["", "runs: " + ", ".join(f"{p.name} = {p.run_id}" for p in points if p.run_id)]
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    model = points[0].cfg.model.name if points else "?"
    pruned = {(model, p.strategy): {q.lr for q in points if q.strategy == p.strategy and q.status == "pruned"}
              for p in points}
    lr_curves([Run(p.run_id or "", model, p.strategy, p.lr, "", "", "", p.index, {metric: p.value},
                   seed="" if p.seed is None else str(p.seed)) for p in points if p.value is not None], metric, out, pruned)
    return out


# --------------------------------------------------------------------------------------- SLURM
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


# ------------------------------------------------------------------------------------------ CLI
def _say(msg: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _benches(text: str) -> list[str]:
    return [] if text.strip().lower() in ("", "none") else [b.strip() for b in text.split(",") if b.strip()]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mmln.sweep", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="run config YAML, e.g. conf/vicuna7b_ln.yaml")
    ap.add_argument("--lrs", nargs="+", default=None, help="learning rates (default: the paper's 11)")
    ap.add_argument("--strategies", nargs="+", default=None, help="tuning strategies (default: the config's)")
    ap.add_argument("--bench", type=_benches, default=DEFAULT_BENCH,
                    help="benchmarks evaluated at every point, comma-separated, or 'none' (default: flickr30k)")
    ap.add_argument("--final-bench", type=_benches, default=[],
                    help="benchmarks evaluated only at each strategy's best point, after the sweep")
    ap.add_argument("--select-metric", default=DEFAULT_METRIC, help="picks the best lr per strategy (default: %(default)s)")
    ap.add_argument("--variant", default="", help="run-name prefix and `variant` tag (e.g. conversation20k)")
    ap.add_argument("--seeds", type=int, default=1, metavar="N",
                    help="train every point with N seeds (train.seed, +1, ...); the best lr by the mean")
    ap.add_argument("--point-overrides", action="append", default=[], metavar="'lr=X[,strategy=S]:key=value ...'",
                    help="overrides for matching points only (repeatable)")
    ap.add_argument("--launcher", choices=("local", "slurm"), default="local")
    ap.add_argument("--slurm-opt", action="append", default=[], metavar="'--partition=gpu'",
                    help=f"extra #SBATCH option (repeatable; always: {' '.join(SBATCH_DEFAULTS)})")
    ap.add_argument("--dry-run", action="store_true", help="print the plan (and what each point would do); run nothing")
    ap.add_argument("--only-index", type=int, default=None, help="run only this point (a SLURM array task)")
    ap.add_argument("--summarize", action="store_true", help="train nothing: best lrs (+ --final-bench) from MLflow")
    ap.add_argument("--sweep-id", default=None, help="default: a hash of the grid, so a re-run continues the sweep")
    h = ap.add_argument_group("successive halving (--search halving; see mmln.halving)")
    h.add_argument("--search", choices=("grid", "halving"), default="grid",
                   help="grid: every point to the end; halving: Optuna successive halving over the lrs")
    h.add_argument("--eta", type=int, default=3, help="halving: keep the best 1/eta at each rung (default 3)")
    h.add_argument("--halving-rule", choices=("sync", "async"), default="sync",
                   help="halving: sync (default): once every point of a rung reports, its best ceil(n/eta) go on; "
                        "async: Optuna's SuccessiveHalvingPruner, in trial order against the points before")
    h.add_argument("--first-rung", type=fraction, default=fraction("1/12"), metavar="1/12",
                   help="halving: the first rung, as a fraction of the run (default 1/12)")
    h.add_argument("--proxy-bench", default="flickr30k", help="halving: the benchmark of the proxy score")
    h.add_argument("--proxy-metric", default=DEFAULT_METRIC,
                   help="halving: the proxy score, an eval/* metric of --proxy-bench or val/loss (data.val; "
                        "default %(default)s)")
    h.add_argument("--proxy-overrides", default="eval.limit=100", metavar="'eval.limit=100'",
                   help="halving: overrides of the proxy evaluation (default: the first 100 items)")
    h.add_argument("--study-storage", default=None, metavar="URL",
                   help="halving: Optuna RDB storage (default: sqlite optuna.db beside the MLflow store)")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides for every point")
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = parser()
    args = ap.parse_args(argv)
    # `--lrs 1e-3 1e-4 train.max_steps=2`: a key=value after a list option is an override, not a list item
    for opt in ("lrs", "strategies"):
        items = [x for v in getattr(args, opt) or [] for x in v.split(",") if x]
        args.overrides = [x for x in items if "=" in x] + args.overrides
        setattr(args, opt, [x for x in items if "=" not in x] or None)
    try:
        args.lrs = [float(x) for x in args.lrs] if args.lrs else None
    except ValueError as e:
        ap.error(f"--lrs: {e}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mmln.fit import experiment_name
    from mmln.model.errors import MissingWeightsError
    from mmln.tracking import tracking_uri

    try:
        base = load_config(args.config, args.overrides)
        args.strategies = args.strategies or [base.tune.strategy]
        args.lrs = args.lrs or list(PAPER_LRS)
        check_select(args.select_metric, args.bench)
        halving = halving_options(args, base)
        if args.seeds < 1:
            raise ConfigError(f"--seeds {args.seeds}: at least 1")
        seeds = [base.train.seed + i for i in range(args.seeds)] if args.seeds > 1 else []
        points = plan(args.config, args.strategies, args.lrs, args.overrides, args.point_overrides, args.variant,
                      seeds)
        if args.only_index is not None and not 0 <= args.only_index < len(points):
            raise ConfigError(f"--only-index {args.only_index}: the grid has points 0..{len(points) - 1}")
        if not args.dry_run and args.launcher == "local" and not args.summarize:
            from mmln.eval.benchmarks import check_inputs
            from mmln.eval.caption import require_java

            benches = args.bench + args.final_bench + ([halving.bench] if halving and halving.bench else [])
            check_inputs(base, benches)  # a missing benchmark file fails now, not after the first training
            if {"coco", "flickr30k"} & set(benches):
                require_java()
    except (ConfigError, MissingWeightsError, FileNotFoundError) as e:
        print(f"mmln.sweep: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # e.g. JavaNotFoundError
        print(f"mmln.sweep: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2

    experiment = experiment_name(points[0].cfg, args.config)
    uri = tracking_uri(points[0].cfg.tracking.uri)
    sweep_id = args.sweep_id or sweep_id_of(points, args.bench + ([f"halving:{halving}"] if halving else []))
    header = f"sweep {sweep_id}: experiment '{experiment}', {len(points)} points, select by {args.select_metric}"
    if args.dry_run:
        print(header)
        no_store = uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file()
        client = None if no_store else Tracker(uri)  # a dry run creates no database
        exp = client.get_experiment_by_name(experiment) if client else None
        for p in points:
            action = decide(p, client, exp.experiment_id, args.bench, args.select_metric)[0] if exp else "train"
            print(f"  [{p.index}] {p.name:32s} {action:9s} hash {p.hash}  {' '.join(p.overrides)}")
            moved = displaced(p) if action == "train" else None
            if moved:
                print(f"      would move aside {moved}")
        return 0

    if args.launcher == "slurm" or args.only_index is not None:  # SLURM: array tasks share the sweep
        return execute(args, points, base, halving, experiment, uri, sweep_id, header)
    try:
        with exclusive(sweep_lock(points[0], experiment, sweep_id), wait=False):
            return execute(args, points, base, halving, experiment, uri, sweep_id, header)
    except Busy as e:
        print(f"mmln.sweep: error: sweep {sweep_id} is running already ({e}): wait for it to end or stop it "
              "(a killed sweep holds nothing; its rerun continues it)", file=sys.stderr)
        return 2


def sweep_lock(p: Point, experiment: str, sweep_id: str) -> Path:
    """The lock file a running sweep holds (one process drives a sweep: its parent run, its study)."""
    return Path(p.cfg.output_dir) / experiment / ".locks" / f"sweep-{sweep_id}.lock"


def point_lock(p: Point):
    """Held while a point trains, evaluates or is scored: a second sweep reaching it waits, then
    finds it done (mmln.locks; beside the run folder, which a point may move aside)."""
    return exclusive(p.run_dir.parent / ".locks" / f"{p.run_dir.name}.lock",
                     say=lambda msg: _say(f"[{p.index}] {p.name}: {msg}"))


def execute(args, points: list[Point], base, halving, experiment: str, uri: str, sweep_id: str, header: str) -> int:
    """Everything after the plan: the parent run, the points (or the SLURM scripts), the summary."""
    client = Tracker(uri)  # the store, its schema and the experiment: once, up front
    exp_id = client.experiment_id(experiment)
    params = {"config": args.config, "strategies": " ".join(args.strategies), "lrs": " ".join(f"{x:g}" for x in args.lrs),
              "bench": ",".join(args.bench) or "none", "select_metric": args.select_metric, "variant": args.variant,
              "overrides": " ".join(args.overrides), "n_points": len(points), "seeds": args.seeds}
    tags = {"model": base.model.name, "config_family": experiment, "variant": args.variant, "search": args.search,
            "name": sweep_name(base.model.name, args.strategies, len(args.lrs), args.variant)}
    parent_id = parent_run(client, exp_id, sweep_id, args.only_index is None, params, tags)

    if args.launcher == "slurm":
        array, summary = write_slurm(args, points, sweep_id, uri, experiment)
        print(header)
        for p in points:
            print(f"  [{p.index}] {p.name}")
        print(f"wrote {array} and {summary}; submit with:\n"
              f"  jid=$(sbatch --parsable {array}) && sbatch --dependency=afterany:$jid {summary}")
        return 0

    _say(header + f" (parent run {parent_id})")
    todo = points if args.only_index is None else [points[args.only_index]]
    moves = [m for p in todo if not args.summarize and decide(p, client, exp_id, args.bench, args.select_metric)[0] == "train"
             for m in [displaced(p)] if m]
    if moves:  # said before anything runs: a finished run of another config is never moved silently
        _say(f"WARNING: {len(moves)} run dir(s) hold runs of another config and will be moved aside "
             "(their MLflow runs stay; `--dry-run` lists this):\n  " + "\n  ".join(moves))
    if parent_id and args.only_index is None:
        client.update_run(parent_id, status="RUNNING")
    try:
        if halving:  # --summarize: trains nothing, settles what the stores hold (decides a scored rung)
            from mmln.halving import default_storage, log_budget, run_halving

            storage = args.study_storage or default_storage(uri, Path(points[0].cfg.output_dir) / experiment)
            budget = run_halving(points, client, exp_id, parent_id, sweep_id, args.bench, args.select_metric,
                                 args.config, halving, storage, _say, train=not args.summarize)
            _say(f"halving: {budget['halving/steps_spent']} of {budget['halving/steps_full_grid']} steps "
                 f"({budget['halving/budget_fraction']:.3f} of the full grid)")
            log_budget(client, parent_id, budget, halving, storage)
        elif not args.summarize:
            from mmln.progress import eta

            t0 = time.time()
            for k, p in enumerate(todo):
                _say(f"point {k + 1}/{len(todo)}: {p.name} ({time.time() - t0:.0f}s so far, "
                     f"ETA {eta(k, len(todo), time.time() - t0)})")
                try:
                    with point_lock(p):
                        run_point(p, client, exp_id, parent_id, sweep_id, args.bench, args.select_metric,
                                  args.config)
                except Exception as e:
                    p.status, p.error = "failed", f"{type(e).__name__}: {e}"
                    _say(f"[{p.index}] {p.name}: FAILED: {p.error}\n{traceback.format_exc(limit=-3)}")
        if args.only_index is not None:
            return 1 if todo[0].status == "failed" else 0
        best = summarize(points, client, exp_id, args.select_metric)
        final_failed = run_final_benches(best, client, args.final_bench)
        if parent_id:
            log_summary(client, parent_id, points, best, args.select_metric)
    except KeyboardInterrupt:
        if parent_id and args.only_index is None:
            client.end(parent_id, "KILLED")
        raise
    failed = [p for p in points if p.status in ("failed", "missing")]
    if parent_id:
        client.end(parent_id, "FAILED" if failed or final_failed else "FINISHED")
    print(report_text(points, best, args.select_metric, header))
    if failed or final_failed:
        for p in failed:
            print(f"FAILED [{p.index}] {p.name}: {p.error}", file=sys.stderr)
        for name in final_failed:
            print(f"FAILED final evaluation of {name}", file=sys.stderr)
        return 1
    return 0


def halving_options(args, base):
    """The successive-halving options (None for a grid search); config problems are ConfigErrors."""
    if args.search != "halving":
        return None
    from mmln.halving import Options

    if args.launcher == "slurm" or args.only_index is not None:
        raise ConfigError("--search halving drives its Optuna study from one process: "
                          "no --launcher slurm / --only-index (submit the whole sweep as one job)")
    opts = Options(args.eta, args.first_rung, args.proxy_metric, args.proxy_bench, args.proxy_overrides.split(),
                   args.study_storage, args.halving_rule)
    opts.check()
    if opts.bench is None and not base.data.val.files:
        raise ConfigError("--proxy-metric val/loss needs held-out validation records: set data.val.files "
                          "(data.val.limit=N for a fixed subset)")
    return opts


def run_final_benches(best: dict[str, Point], client, benches: list[str]) -> list[str]:
    """Evaluate each strategy's best point on `benches` it lacks; the names of points that failed."""
    from mmln.evaluate import evaluate

    failed = []
    for p in best.values():
        missing = [b for b in benches if not has_bench(client.get_run(p.run_id).data.metrics, b)]
        if not missing:
            continue
        _say(f"[{p.index}] {p.name}: best {p.strategy} point, evaluating {','.join(missing)}")
        try:
            with point_lock(p):
                evaluate(p.cfg, str(p.run_dir / "trainable.safetensors"), missing, p.run_dir / "eval", run_id=p.run_id)
        except Exception as e:
            client.set_tags(p.run_id, {Tags.EVAL_ERROR: f"{type(e).__name__}: {e}"[:5000]})
            _say(f"[{p.index}] {p.name}: final evaluation FAILED: {type(e).__name__}: {e}")
            failed.append(p.name)
    return failed


def report_text(points: list[Point], best: dict[str, Point], metric: str, header: str) -> str:
    counts = {s: sum(p.status == s for p in points)
              for s in ("trained", "evaluated", "skipped", "done", "pruned", "failed", "missing")}
    lines = [header + ": " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
    for p in points:
        value = "-" if p.value is None else f"{p.value:.4g}"
        lines.append(f"  {p.name:32s} {p.status:9s} {metric}={value:8s} run {p.run_id or '-'}")
    from mmln.selection import mean_ci

    scores = lr_scores(points)
    for s, p in best.items():
        mean, half, n = mean_ci(scores[s][p.lr])
        value = f"{mean:.4g}" + (f" +- {half:.2g} (95% CI, {n} seeds)" if n > 1 else "")
        lines.append(f"best {s}: lr={p.lr:g} ({metric}={value}, run {p.run_id})")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
