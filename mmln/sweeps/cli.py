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
the best learning rate by `--select-metric` (`mmln.eval.selection.best_lr`: the highest mean over the
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

`--search halving` (mmln.sweeps.halving) trains the same points by successive halving instead: every
point to a first rung (`--first-rung`, 1/12 of the run), scored by a cheap proxy (`--proxy-metric`),
the best 1/`--eta` continued from their checkpoints, rung after rung, by Optuna's GridSampler and
a synchronous halving pruner (`--halving-rule async`: Optuna's SuccessiveHalvingPruner) in a
shared study (`--study-storage`: a journal file, by default in the experiment's folder, or an RDB
URL); survivors end bit-identical to the grid's runs and get the `--bench` evaluation; the parent
records the steps spent. Any number of workers work on one halving sweep (`mmln.sweeps.workers`):
`--workers N` starts N here, `--launcher slurm --workers N` writes an array of N workers (each
`... --worker`), and a worker killed at any moment leaves its point to another after the heartbeat
timeout.

Exit codes: 0 every point done (or pruned); 1 some point failed (listed); 2 a config problem, or the
same sweep running already, before any run.

One launch of a sweep at a time on a machine: a running sweep (not its `--worker`s) holds a lock
(`mmln.base.locks`) that a second run of the same sweep
is refused by (exit 2, naming the holder), and a lock per point while it trains, is evaluated or is
scored, which another sweep reaching the point waits for. The kernel frees both when the process
ends in any way, kill -9 included.

The package (`mmln/sweeps/`): `plan` (the grid), `point` (the one point runner), `grid` (grid
search), `halving` + `study` + `rungs` + `proxy` (successive halving), `summary` (best lrs, parent
summary, comparison files), `slurm` (array scripts), `cli` (this command; `python -m mmln.sweep`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmln.config import PAPER_LRS, ConfigError, load_config
from mmln.base.locks import Busy, exclusive
from mmln.sweeps.plan import DEFAULT_BENCH, DEFAULT_METRIC, Point, check_select, plan, sweep_id_of, sweep_name
from mmln.sweeps.point import SweepRun, decide, displaced, parent_run, say
from mmln.sweeps.rungs import fraction
from mmln.sweeps.slurm import SBATCH_DEFAULTS, write_slurm
from mmln.sweeps.summary import log_summary, points_scale, report_text, run_final_benches, summarize
from mmln.tracking import Tracker


def bench_list(text: str) -> list[str]:
    """`--bench` / `--final-bench`: comma-separated benchmarks, or 'none'."""
    return [] if text.strip().lower() in ("", "none") else [b.strip() for b in text.split(",") if b.strip()]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mmln.sweep", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="run config YAML, e.g. conf/vicuna7b_ln.yaml")
    ap.add_argument("--lrs", nargs="+", default=None, help="learning rates (default: the paper's 11)")
    ap.add_argument("--strategies", nargs="+", default=None, help="tuning strategies (default: the config's)")
    ap.add_argument("--bench", type=bench_list, default=DEFAULT_BENCH,
                    help="benchmarks evaluated at every point, comma-separated, or 'none' (default: flickr30k)")
    ap.add_argument("--final-bench", type=bench_list, default=[],
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
    h = ap.add_argument_group("successive halving (--search halving; see mmln.sweeps.halving)")
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
    h.add_argument("--study-storage", default=None, metavar="URL|FILE",
                   help="halving: the Optuna storage every worker shares: an RDB URL (postgresql://...) or a "
                        "journal file (default: optuna.journal in the experiment's output folder)")
    h.add_argument("--workers", type=int, default=None, metavar="N",
                   help="halving: N worker processes on the study (local: started here; --launcher slurm: "
                        "the array's size, default ceil(points / eta))")
    h.add_argument("--worker", action="store_true",
                   help="halving: work on a started sweep's study as one worker (an array task; no summary)")
    h.add_argument("--heartbeat", type=float, default=30.0, metavar="S",
                   help="halving: seconds between a worker's heartbeats (default %(default)s)")
    h.add_argument("--heartbeat-timeout", type=float, default=300.0, metavar="S",
                   help="halving: a point whose worker (on another host) has not beaten for S seconds is "
                        "taken over (default %(default)s)")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides for every point")
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = parser()
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `--workers N` hands its workers
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
        base, halving, points = prepare(args)
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
        return dry_run(args, points, uri, experiment, header)
    if args.launcher == "slurm" or args.only_index is not None or args.worker:  # array tasks share the sweep
        return execute(args, points, base, halving, experiment, uri, sweep_id, header)
    try:
        with exclusive(sweep_lock(points[0], experiment, sweep_id), wait=False):
            return execute(args, points, base, halving, experiment, uri, sweep_id, header)
    except Busy as e:
        print(f"mmln.sweep: error: sweep {sweep_id} is running already ({e}): wait for it to end or stop it "
              "(a killed sweep holds nothing; its rerun continues it)", file=sys.stderr)
        return 2


def prepare(args) -> tuple:
    """The base config, the halving options (None for a grid) and the planned points, every input
    checked before any run (config problems raise ConfigError)."""
    base = load_config(args.config, args.overrides)
    args.strategies = args.strategies or [base.tune.strategy]
    args.lrs = args.lrs or list(PAPER_LRS)
    check_select(args.select_metric, args.bench)
    halving = halving_options(args, base)
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: at least 1")
    seeds = [base.train.seed + i for i in range(args.seeds)] if args.seeds > 1 else []
    points = plan(args.config, args.strategies, args.lrs, args.overrides, args.point_overrides, args.variant, seeds)
    if args.only_index is not None and not 0 <= args.only_index < len(points):
        raise ConfigError(f"--only-index {args.only_index}: the grid has points 0..{len(points) - 1}")
    if not args.dry_run and args.launcher == "local" and not args.summarize:
        from mmln.eval.benchmarks import check_inputs
        from mmln.eval.caption import require_java

        benches = args.bench + args.final_bench + ([halving.bench] if halving and halving.bench else [])
        check_inputs(base, benches)  # a missing benchmark file fails now, not after the first training
        if {"coco", "flickr30k"} & set(benches):
            require_java()
    return base, halving, points


def dry_run(args, points: list[Point], uri: str, experiment: str, header: str) -> int:
    """`--dry-run`: the plan and what each point would do; creates no database, runs nothing."""
    print(header)
    no_store = uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file()
    client = None if no_store else Tracker(uri)
    exp = client.get_experiment_by_name(experiment) if client else None
    for p in points:
        action = decide(p, client, exp.experiment_id, args.bench, args.select_metric)[0] if exp else "train"
        print(f"  [{p.index}] {p.name:32s} {action:9s} hash {p.hash}  {' '.join(p.overrides)}")
        moved = displaced(p) if action == "train" else None
        if moved:
            print(f"      would move aside {moved}")
    return 0


def sweep_lock(p: Point, experiment: str, sweep_id: str) -> Path:
    """The lock file a running sweep holds (one launch per machine: its parent run; workers join with --worker)."""
    return Path(p.cfg.output_dir) / experiment / ".locks" / f"sweep-{sweep_id}.lock"


def open_sweep(args, points: list[Point], base, experiment: str, uri: str, sweep_id: str) -> SweepRun:
    """The store, its schema and the experiment (once, up front) and the parent run."""
    client = Tracker(uri)
    exp_id = client.experiment_id(experiment)
    params = {"config": args.config, "strategies": " ".join(args.strategies), "lrs": " ".join(f"{x:g}" for x in args.lrs),
              "bench": ",".join(args.bench) or "none", "select_metric": args.select_metric, "variant": args.variant,
              "overrides": " ".join(args.overrides), "n_points": len(points), "seeds": args.seeds}
    tags = {"model": base.model.name, "config_family": experiment, "variant": args.variant, "search": args.search,
            "name": sweep_name(base.model.name, args.strategies, len(args.lrs), args.variant)}
    parent_id = parent_run(client, exp_id, sweep_id, args.only_index is None and not args.worker, params, tags)
    return SweepRun(client, exp_id, parent_id, sweep_id, args.bench, args.select_metric, args.config)


def execute(args, points: list[Point], base, halving, experiment: str, uri: str, sweep_id: str, header: str) -> int:
    """Everything after the plan: the parent run, the points (or the SLURM scripts), the summary."""
    run = open_sweep(args, points, base, experiment, uri, sweep_id)
    if run.parent_id is None and args.worker:
        print(f"mmln.sweep: error: --worker: sweep {sweep_id} has no parent run in {uri}: start the sweep first "
              "(`--launcher slurm` writes its array; or run it without --worker)", file=sys.stderr)
        return 2
    if args.launcher == "slurm":
        storage = study_storage(args, points, uri, experiment) if halving else None
        array, summary = write_slurm(args, points, sweep_id, uri, experiment, storage)
        print(header + "".join(f"\n  [{p.index}] {p.name}" for p in points))
        print(f"wrote {array} and {summary}; submit with:\n"
              f"  jid=$(sbatch --parsable {array}) && sbatch --dependency=afterany:$jid {summary}")
        return 0
    say(header + f" (parent run {run.parent_id})")
    todo = points if args.only_index is None else [points[args.only_index]]
    moves = [m for p in todo if not args.summarize and decide(p, run.client, run.exp_id, args.bench,
                                                              args.select_metric)[0] == "train"
             for m in [displaced(p)] if m]
    if moves:  # said before anything runs: a finished run of another config is never moved silently
        say(f"WARNING: {len(moves)} run dir(s) hold runs of another config and will be moved aside "
            "(their MLflow runs stay; `--dry-run` lists this):\n  " + "\n  ".join(moves))
    whole = args.only_index is None and not args.worker
    if run.parent_id and whole:
        run.client.update_run(run.parent_id, status="RUNNING")
    try:
        search(args, points, todo, run, halving, uri, experiment)
        if not whole:
            return 1 if any(p.status == "failed" for p in todo) else 0
        best = summarize(points, run.client, run.exp_id, args.select_metric)
        final_failed = run_final_benches(best, run.client, args.final_bench)
        if run.parent_id:
            log_summary(run.client, run.parent_id, points, best, args.select_metric)
    except KeyboardInterrupt as e:  # SIGTERM / SIGINT (a point's fit saved a resumable checkpoint first)
        if run.parent_id and whole:
            run.client.end(run.parent_id, "KILLED")
        print(f"mmln.sweep: stopped: {str(e) or 'interrupted'}; the same sweep command continues where it stopped",
              file=sys.stderr)
        return 128 + getattr(e, "signum", 2)  # what a shell reports for a process ended by that signal
    return finish(points, best, final_failed, run, header, outputs_line(points, run, experiment, uri))


def search(args, points: list[Point], todo: list[Point], run: SweepRun, halving, uri: str, experiment: str) -> None:
    """The points' work: successive halving (`--summarize`: only settling what the stores hold, a
    scored rung decided), or the grid (nothing under `--summarize`)."""
    if halving:
        from mmln.sweeps.halving import log_budget
        from mmln.sweeps.workers import launch, run_halving

        storage = study_storage(args, points, uri, experiment)
        if (args.workers or 1) > 1 and not args.worker and not args.summarize:
            launch(args.argv, args.workers)  # then this process finishes what dead workers left
        budget = run_halving(points, run, halving, storage, train=not args.summarize)
        if args.worker:
            return
        say(f"halving: {budget['halving/steps_spent']} of {budget['halving/steps_full_grid']} steps "
            f"({budget['halving/budget_fraction']:.3f} of the full grid)")
        log_budget(run.client, run.parent_id, budget, halving, storage)
    elif not args.summarize:
        from mmln.sweeps.grid import run_grid

        run_grid(todo, run)


def study_storage(args, points: list[Point], uri: str, experiment: str) -> str:
    """`--study-storage` (a journal file's path made absolute: the workers may start elsewhere), or
    the default (`mmln.sweeps.study.default_storage`)."""
    from mmln.sweeps.study import default_storage

    if args.study_storage:
        return args.study_storage if "://" in args.study_storage else str(Path(args.study_storage).resolve())
    return default_storage(uri, Path(points[0].cfg.output_dir) / experiment)


def outputs_line(points: list[Point], run: SweepRun, experiment: str, uri: str) -> str:
    """The sweep's last line: where its outputs went (the points' run dirs, the MLflow store, experiment
    and parent run, whose `comparison/` artifacts hold the strategies x learning rates table)."""
    dirs = sorted({str(p.run_dir.parent.resolve()) for p in points})
    where = f"MLflow {uri}, experiment '{experiment}'" + (
        f", sweep run {run.parent_id} (its comparison/ artifacts: comparison.md, lr_curves_*.png)" if run.parent_id else "")
    return f"sweep outputs: run dirs in {', '.join(dirs)}; {where}"


def finish(points: list[Point], best: dict, final_failed: list[str], run: SweepRun, header: str,
           outputs: str = "") -> int:
    """End the parent run, print the report and, last, where the outputs went (`outputs`); 1 when a
    point or a final evaluation failed."""
    failed = [p for p in points if p.status in ("failed", "missing")]
    if run.parent_id:
        run.client.end(run.parent_id, "FAILED" if failed or final_failed else "FINISHED")
    print(report_text(points, best, run.metric, header))
    print(f"sweep scale: {points_scale(run.client, points).removeprefix('Scale: ')}")
    from mmln.ui import dashboard_line

    print(dashboard_line(run.client, run.exp_id, run.metric))  # strategies x lrs in MLflow, best first
    for p in failed:
        print(f"FAILED [{p.index}] {p.name}: {p.error}", file=sys.stderr)
    for name in final_failed:
        print(f"FAILED final evaluation of {name}", file=sys.stderr)
    if outputs:
        sys.stderr.flush()
        print(outputs, flush=True)
    return 1 if failed or final_failed else 0


def halving_options(args, base):
    """The successive-halving options (None for a grid search); config problems are ConfigErrors."""
    if args.search != "halving":
        if args.workers is not None or args.worker:
            raise ConfigError("--workers / --worker: only with --search halving (a grid's points are independent: "
                              "--launcher slurm runs one task per point)")
        return None
    from mmln.sweeps.study import Options

    if args.only_index is not None:
        raise ConfigError("--search halving: no --only-index (its workers take the points: --workers N)")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: at least 1")
    if not 0 < args.heartbeat < args.heartbeat_timeout:
        raise ConfigError(f"--heartbeat {args.heartbeat:g} / --heartbeat-timeout {args.heartbeat_timeout:g}: "
                          "0 < heartbeat < timeout (a few heartbeats per timeout)")
    opts = Options(args.eta, args.first_rung, args.proxy_metric, args.proxy_bench, args.proxy_overrides.split(),
                   args.study_storage, args.halving_rule, args.heartbeat, args.heartbeat_timeout)
    opts.check()
    if opts.bench is None and not base.data.val.files:
        raise ConfigError("--proxy-metric val/loss needs held-out validation records: set data.val.files "
                          "(data.val.limit=N for a fixed subset)")
    return opts


if __name__ == "__main__":
    raise SystemExit(main())
