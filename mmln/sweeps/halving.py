"""Successive halving over a sweep's learning-rate grid (`python -m mmln.sweep --search halving`).

Optuna holds the study and makes the pruning decisions: one study per strategy (and training seed),
a `GridSampler` over the grid's learning rates and a pruner, in a storage that every worker shares:
by default the journal file `optuna.journal` in the experiment's output folder, or any SQLAlchemy
URL (`--study-storage postgresql://...`), so that a study outlives the processes that work on it.

Rung k ends at step `r0 * eta**k` (r0 = round(first_rung * total), at least 1); the last rung is the
full run. Every grid point trains to the end of rung 0 and pauses there (`fit(stop_at=...)`: the
Trainer stops, `checkpoints/last.ckpt` holds the exact state; the warmup + cosine schedule is the
full run's), is scored with a cheap proxy (`--proxy-metric` of `--proxy-bench`, evaluated from that
checkpoint with `--proxy-overrides`, by default `eval.limit=100`: the first 100 test items, the same
fixed subset every time), and reports it to its trial (an intermediate value at the rung's last
step). Then the pruner decides, for each trial of the rung:

- `--halving-rule sync` (default; `SyncHalving`, an `optuna.pruners.BasePruner`): once *every*
  trial of the rung has reported, the best ceil(n / eta) of its n trials are promoted, a tie going
  to the higher learning rate (the tie rule of `mmln.eval.selection.best_lr`), NaN ranking last; asked
  earlier it refuses (`RungIncomplete`). 11 points, eta 3: 4, then 2, then 1 reach the end.
- `--halving-rule async` (Optuna's `SuccessiveHalvingPruner`): in trial order, a trial is promoted
  when its proxy is in the top 1/eta of the trials that reached the rung *before* it (the first
  ones must only beat fewer than eta others), so more points survive.

A pruned trial's state is PRUNED and its MLflow run KILLED. A promoted run *continues* from its
checkpoint to the next rung, so a survivor that reaches the end is bit-identical to the same point
of the full grid, and gets the sweep's full evaluation (`--bench`); its trial is told the selection
metric.

Restartable after a kill at any moment: nothing is assumed from an earlier process. A rung already
reported (the trial's intermediate value) is not trained or scored again; a point killed mid-rung
continues from its last checkpoint (mmln's exact resume); `settle` completes whatever a kill left
half written (a rung scored but not decided is decided, a decided trial gets its PRUNED state, the
runs their `halving/state` tags and `halving/proxy` metrics), also under `--summarize`. Every
point is an MLflow child run of the sweep, with tags `halving/state` (paused | promoted | pruned |
finished), `halving/rung`, `optuna/study`, `optuna/trial`, and the metric `halving/proxy` (step =
the rung's last optimizer step). The parent run records `halving/steps_spent`,
`halving/steps_full_grid` and `halving/budget_fraction`.

The sync rule is a pure function of the stored intermediate values (`mmln.sweeps.rungs.sync_promoted`), so a
restarted process, or another one on the same storage, reaches the same decisions. A point that
fails before reporting leaves its rung undecided (the sweep exits 1); a re-run trains it and
decides the rung. Any number of workers may work on the study at once (`mmln.sweeps.workers`:
each takes the next point it can claim; the decisions are the same).
"""
from __future__ import annotations

import math
from typing import Any

from mmln.sweeps.point import SweepRun, point_lock, run_point, say
from mmln.sweeps.proxy import proxy
from mmln.sweeps.rungs import rung_steps
from mmln.sweeps.study import PROXY, RUNG, STATE, Options, decide_rung, grid_trials, quiet_optuna


def trial_points(study, pts: list, ask: bool = True) -> dict[int, Any]:
    """trial number -> its grid point; each point's MLflow run read from its run folder (what fit
    resumes into), so a restarted process knows the runs of the points it does not train again."""
    lrs = [p.lr for p in pts]
    out = {n: next(p for p in pts if p.lr == lr) for lr, n in grid_trials(study, lrs, ask).items()}
    for p in out.values():
        id_file = p.run_dir / "mlflow_run_id"
        p.run_id = p.run_id or (id_file.read_text().strip() if id_file.is_file() else None)
    return out


def alive_at(study, point_of: dict[int, Any], rung: int) -> list[int]:
    """The trials that run rung `rung`: still RUNNING, promoted at every rung before."""
    TS = quiet_optuna().trial.TrialState
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    return [n for n in sorted(point_of) if trials[n].state == TS.RUNNING
            and all(trials[n].user_attrs.get(f"rung{j}") == "promoted" for j in range(rung))]


def advance(study, n: int, p, rung: int, run: SweepRun, opts: Options) -> None:
    """Trial `n` (point `p`) to the end of `rung` and scored there (the proxy reported to the trial,
    then logged to MLflow), or, at the last rung, to the end of the run and told its metric; under
    the point's lock. The first run to reach its rung end tells the study the rung steps."""
    steps = study.user_attrs.get("rung_steps")
    t = next(t for t in study.get_trials(deepcopy=False) if t.number == n)
    if steps is not None and rung < len(steps) - 1 and steps[rung] in t.intermediate_values:
        return  # scored before (an earlier process)
    with point_lock(p):  # another sweep training this point: wait for it (then it is done, or paused)
        train_and_score(study, t, p, rung, run, opts)


def train_and_score(study, t, p, rung: int, run: SweepRun, opts: Options) -> None:
    """`advance`'s work, under the point's lock."""
    optuna = quiet_optuna()
    TS = optuna.trial.TrialState
    n, steps = t.number, study.user_attrs.get("rung_steps")
    last = steps is not None and rung == len(steps) - 1
    say(f"[{p.index}] {p.name}: halving rung {rung}" + (" (the full run)" if last else ""))
    seen: list[int] = []

    def stop(total: int) -> int:
        seen.append(total)
        ends = rung_steps(total, opts.first_rung, opts.eta)
        return ends[min(rung, len(ends) - 1)]

    tags = {"optuna/study": study.study_name, "optuna/trial": str(n), RUNG: str(rung),
            STATE: "finished" if last else "paused"}
    try:
        run_point(p, run, stop_at=stop, extra_tags=tags)
    except Exception as e:  # the trial stays RUNNING: a re-run retries it
        p.status, p.error = "failed", f"{type(e).__name__}: {e}"
        say(f"[{p.index}] {p.name}: FAILED: {p.error}")
        return
    if steps is None and seen:
        steps = rung_steps(seen[0], opts.first_rung, opts.eta)
        study.set_user_attr("rung_steps", steps)
    if p.status != "paused":  # finished: the full run (last rung, or done before, e.g. by the full grid)
        value = run.client.get_run(p.run_id).data.metrics.get(run.metric)
        ok = value is not None and not math.isnan(value)
        study.tell(n, value if ok else None, state=TS.COMPLETE if ok else TS.FAIL)
        run.client.set_tag(p.run_id, STATE, "finished")
        return
    value = proxy(p, opts, rung)
    optuna.trial.Trial(study, t._trial_id).report(value, steps[rung])
    run.client.log_metric(p.run_id, PROXY, value, step=steps[rung])


def settle(study, point_of: dict[int, Any], client, busy=frozenset) -> None:
    """Bring the stores in line with what the study holds, whatever moment a kill interrupted: a
    trial whose decision says pruned is PRUNED; every rung whose live trials have all reported is
    decided (`decide_rung`: the decisions the killed process would have made, from the stored
    proxies); each point's run carries the `halving/state` its trial implies (`run_state`) and every
    reported proxy as its `halving/proxy` metric. `busy()`: the trials another worker holds now,
    read after the trials (their owners log their own proxies; their runs are left alone)."""
    TS = quiet_optuna().trial.TrialState
    steps = study.user_attrs.get("rung_steps")
    if not steps:
        return
    for t in study.get_trials(deepcopy=False):  # killed between a trial's decision and its PRUNED state
        if t.number in point_of and t.state == TS.RUNNING and "pruned" in t.user_attrs.values():
            study.tell(t.number, state=TS.PRUNED)
    for k in range(len(steps) - 1):
        alive = alive_at(study, point_of, k)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        if not all(steps[k] in trials[n].intermediate_values for n in alive):
            break  # rung k still being scored: decided once every live trial has reported
        for n, pruned in decide_rung(study, alive, steps[k], k).items():
            p, value = point_of[n], trials[n].intermediate_values[steps[k]]
            say(f"[{p.index}] {p.name}: proxy {value:.6g} at step {steps[k]}: "
                + ("pruned" if pruned else f"promoted to rung {k + 1}"))
    trials, held = study.get_trials(deepcopy=False), busy()
    for t in trials:
        p = point_of.get(t.number)
        if p is not None and t.number not in held and p.run_id and (t.intermediate_values or t.state.is_finished()):
            sync_run(client, p.run_id, run_state(t, steps), t.intermediate_values)


def run_state(t, steps: list[int]) -> str:
    """The `halving/state` trial `t` implies: pruned; finished (told its final metric); promoted
    (decided at a rung, not yet scored at the next); else paused."""
    TS = quiet_optuna().trial.TrialState
    if t.state == TS.PRUNED:
        return "pruned"
    if t.state.is_finished():
        return "finished"
    decided = [k for k in range(len(steps) - 1) if t.user_attrs.get(f"rung{k}") == "promoted"]
    nxt = decided[-1] + 1 if decided else None
    if nxt is not None and (nxt == len(steps) - 1 or steps[nxt] not in t.intermediate_values):
        return "promoted"
    return "paused"


def sync_run(client, run_id: str, state: str, proxies: dict[int, float]) -> None:
    """The run's `halving/state` tag and `halving/proxy` history as its trial holds them (a kill
    between the study's write and MLflow's left them behind)."""
    if client.get_run(run_id).data.tags.get(STATE) != state:
        client.set_tag(run_id, STATE, state)
    logged = {m.step for m in client.get_metric_history(run_id, PROXY)}
    for step, value in sorted(proxies.items()):
        if step not in logged:
            client.log_metric(run_id, PROXY, value, step=step)


def log_budget(client, parent_id: str, budget: dict[str, float], opts: Options, storage: str) -> None:
    """The parent run's budget metrics and the search's settings (`client`: a mmln.tracking.Tracker)."""
    client.log_metrics(parent_id, budget)
    client.set_tags(parent_id, {"search": "halving", "halving/rule": opts.rule, "halving/eta": opts.eta,
                                "halving/first_rung": f"{opts.first_rung:.6g}",
                                "halving/proxy": f"{opts.proxy_metric} ({' '.join(opts.proxy_overrides)})",
                                "optuna/storage": storage})
