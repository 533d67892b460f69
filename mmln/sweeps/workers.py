"""Many workers, one halving sweep: the worker loop every process of a `--search halving` sweep runs
(the one process of a plain sweep, each of `--workers N`'s local processes, each task of the SLURM
array), and the local launcher.

A worker opens the sweep's studies in the shared storage (`--study-storage`), then, until every
study is finished: decides a rung whose points have all reported (under the study's `settle`
claim: `halving.settle`, whose rule is `rungs.survivors`, a pure function of the stored proxies,
so any worker decides as one process would), or takes the first point, in the sweep's point order,
that can train now (alive, not yet scored at its rung) and that it can claim (`claims.Claims`:
atomic in the storage, heartbeating, taken over when its holder is dead), trains it to its rung
end through the one point runner, reports it and releases the claim. With nothing to claim it
waits (polling), as long as another worker holds live work; when only work that failed in this
launch is left, it stops. Dead workers' points are resumed from their `last.ckpt` by whoever
claims them next; a launch after everything died resumes the study.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from mmln.sweeps.claims import Claims, launch_id
from mmln.sweeps.halving import advance, alive_at, settle, trial_points
from mmln.sweeps.point import SweepRun, say
from mmln.sweeps.study import (Options, existing_study, load_study, quiet_optuna, storage_of, study_groups,
                               study_min_resource)

POLL_S, MAX_POLL_S = 0.5, 2.0  # seconds between looks for work while others hold it


@dataclass
class Study:
    """One study of the sweep (a strategy and seed): its points and trial number -> point."""
    name: str
    pts: list
    study: Any
    point_of: dict
    async_ready: bool = False  # the async pruner was built with the first rung's step


def claims_for(storage: str, opts: Options) -> Claims:
    return Claims(storage_of(storage), opts.heartbeat_timeout, opts.heartbeat)


def run_halving(points: list, run: SweepRun, opts: Options, storage: str, train: bool = True) -> dict[str, Any]:
    """Work on every study until none has work left (`train=False`, `--summarize`: only `settle`
    what the stores hold), then settle each; set each point's status (`pruned` for the pruned);
    the budget spent."""
    TS = quiet_optuna().trial.TrialState
    claims = claims_for(storage, opts)
    if train:
        work(open_studies(points, run, opts, storage, claims), run, opts, storage, claims)
    spent = full = 0
    for group, pts in study_groups(points).items():
        name = f"mmln-{run.sweep_id}-{group}"
        if (study := existing_study(name, storage, [p.lr for p in pts], opts)) is None:
            continue
        point_of = trial_points(study, pts, ask=False)
        with_claim(claims, name, "settle",
                   lambda: settle(study, point_of, run.client, busy=lambda: busy_trials(claims, name)))
        claims.clear_dead(name)
        steps = study.user_attrs.get("rung_steps") or [0]
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        for n, p in point_of.items():
            p.status = "pruned" if trials[n].state == TS.PRUNED else p.status
            spent += steps[-1] if trials[n].state == TS.COMPLETE else max(trials[n].intermediate_values, default=0)
        full += steps[-1] * len(pts)
    return {"halving/steps_spent": spent, "halving/steps_full_grid": full,
            "halving/budget_fraction": spent / full if full else float("nan")}


def with_claim(claims: Claims, scope: str, item: str, fn) -> None:
    """Run `fn` holding the claim on `item`, waiting while a live worker holds it."""
    while (c := claims.acquire(scope, item)) is None:
        time.sleep(POLL_S)
    try:
        fn()
    finally:
        claims.release(c)


def open_studies(points: list, run: SweepRun, opts: Options, storage: str, claims: Claims) -> list[Study]:
    """The sweep's studies, each with one trial per grid lr (asked for by one worker at a time:
    GridSampler hands out each lr once only to one process)."""
    out = []
    for group, pts in study_groups(points).items():
        name = f"mmln-{run.sweep_id}-{group}"
        study = load_study(name, storage, [p.lr for p in pts], opts, study_min_resource(storage, name))
        if len(trial_points(study, pts, ask=False)) < len(pts):
            with_claim(claims, name, "setup", lambda: trial_points(study, pts))
        out.append(Study(name, pts, study, trial_points(study, pts, ask=False)))
    return out


def work(studies: list[Study], run: SweepRun, opts: Options, storage: str, claims: Claims) -> bool:
    """The worker loop (the module's doc). True when every study is finished, False when what is
    left failed in this launch."""
    idle = POLL_S
    while True:
        if any(step(s, run, opts, storage, claims) for s in studies):
            idle = POLL_S
            continue
        if all(finished(s) for s in studies):
            return True
        if not any(claims.busy(s.name) for s in studies):
            say("no work left that has not failed in this launch: stopping")
            return False
        time.sleep(idle)  # waiting for other workers: look again, less often the longer it lasts
        idle = min(idle * 1.5, MAX_POLL_S)


def finished(s: Study) -> bool:
    return all(t.state.is_finished() for t in s.study.get_trials(deepcopy=False) if t.number in s.point_of)


def todo(s: Study) -> list[tuple[int, int]]:
    """(trial, rung) of each point that can train now, in trial order: running, promoted at every
    rung before, not yet scored at this one."""
    TS = quiet_optuna().trial.TrialState
    steps = s.study.user_attrs.get("rung_steps")
    out = []
    for t in sorted(s.study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.number not in s.point_of or t.state != TS.RUNNING or "pruned" in t.user_attrs.values():
            continue
        k = 0
        while t.user_attrs.get(f"rung{k}") == "promoted":
            k += 1
        if not (steps and k < len(steps) - 1 and steps[k] in t.intermediate_values):
            out.append((t.number, k))
    return out


def undecided(s: Study) -> bool:
    """A rung whose live points have all reported and are not all decided (or a decision whose
    PRUNED state a kill left unwritten)."""
    steps = s.study.user_attrs.get("rung_steps")
    if not steps:
        return False
    trials = {t.number: t for t in s.study.get_trials(deepcopy=False)}
    if any(t.state == t.state.RUNNING and "pruned" in t.user_attrs.values() for t in trials.values()):
        return True
    for k in range(len(steps) - 1):
        alive = alive_at(s.study, s.point_of, k)
        if alive and all(steps[k] in trials[n].intermediate_values for n in alive) \
                and any(f"rung{k}" not in trials[n].user_attrs for n in alive):
            return True
    return False


def busy_trials(claims: Claims, name: str) -> set[int]:
    return {int(item[1:].split("-")[0]) for item in claims.busy(name) if item.startswith("t")}


def step(s: Study, run: SweepRun, opts: Options, storage: str, claims: Claims) -> bool:
    """One piece of work on study `s`, if there is one this worker can claim: decide a rung, or
    train a point to its rung end. Whether it did anything."""
    if undecided(s) and (c := claims.acquire(s.name, "settle")) is not None:
        try:
            settle(s.study, s.point_of, run.client, busy=lambda: busy_trials(claims, s.name))
        finally:
            claims.release(c)
        return True
    for n, k in todo(s):
        if (c := claims.acquire(s.name, f"t{n}-r{k}")) is None:
            continue
        p, failed = s.point_of[n], None
        try:
            if (n, k) in todo(s):  # not done by another worker between the look and the claim
                p.status = p.error = None
                advance(s.study, n, p, k, run, opts)
                failed = p.error if p.status == "failed" else None
        except Exception as e:
            failed = f"{type(e).__name__}: {e}"
            raise
        finally:
            claims.release(c, failed)
        if opts.rule == "async" and not s.async_ready and (steps := s.study.user_attrs.get("rung_steps")):
            s.study, s.async_ready = load_study(s.name, storage, [q.lr for q in s.pts], opts, steps[0]), True
        return True
    return False


def launch(argv: list[str], n: int) -> list[int]:
    """`--workers N`: N local worker processes (`python -m mmln.sweep ARGV --worker`), one launch
    (`MMLN_SWEEP_LAUNCH`); waits for them. Their exit codes (-9: killed)."""
    env = {**os.environ, "MMLN_SWEEP_LAUNCH": launch_id()}
    procs = [subprocess.Popen([sys.executable, "-m", "mmln.sweep", *argv, "--worker"], env=env) for _ in range(n)]
    say(f"{n} workers started: pids {' '.join(str(p.pid) for p in procs)}")
    codes = [p.wait() for p in procs]
    say(f"workers ended: exit codes {' '.join(map(str, codes))}")
    return codes

