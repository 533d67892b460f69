"""Successive halving survives kill -9 at any moment (issue 22 item 2): the study's state (rung,
decisions, the runs' `halving/state` tags, the proxy metrics) is derived from the stores on
restart, never assumed.

The fast test kills the sweep (a real SIGKILL of a `python -m mmln.sweep`-equivalent subprocess) at
the seams where a store is written between "rung scored" and "rung decided": before the first
decision, between a trial's decision and its PRUNED state, between the decisions and the MLflow
tags, between a proxy's report to Optuna and its MLflow metric. The slow one kills at dozens of
seeded random moments across the whole sweep. Both rerun until done and compare with an
uninterrupted sweep: the same survivors and best lr, survivor weights `torch.equal`, exit 0, the
parent FINISHED, no RUNNING run left, every pruned point tagged pruned (also by `--summarize`).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from mmln import sweep
from tests.conftest import ROOT
from tests.test_halving import LRS, METRIC, halving_args, world  # noqa: F401  (world: a module fixture)

# A kill hook for the subprocess: SIGKILL itself at the n-th call of a public Optuna / MLflow entry
# point matching a condition (what the sweep writes at that moment is then half done).
HOOK = r"""
import json, os, signal, sys
import mlflow, optuna
spec = json.loads(os.environ["KILL_AT"])
calls = [0]

def hook(cls, name, match):
    orig = getattr(cls, name)
    def wrapped(*args, **kwargs):
        if match(*args, **kwargs):
            calls[0] += 1
            if calls[0] == spec["n"]:
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return orig(*args, **kwargs)
    setattr(cls, name, wrapped)

TS = optuna.trial.TrialState
where = spec["at"]
if where == "decide":  # every point of the rung scored, nothing decided yet
    hook(optuna.trial.Trial, "should_prune", lambda *a, **k: True)
elif where == "pruned":  # a trial's decision stored (user attribute), its PRUNED state not yet
    hook(optuna.study.Study, "tell", lambda self, trial, values=None, state=None, **k: state == TS.PRUNED)
elif where == "tags":  # the rung decided in Optuna, the MLflow tags not yet
    hook(mlflow.MlflowClient, "set_tag",
         lambda self, run_id, key, value, **k: key == "halving/state" and value in ("pruned", "promoted"))
elif where == "proxy":  # a proxy reported to Optuna, not yet logged to MLflow
    hook(mlflow.MlflowClient, "log_metric", lambda self, run_id, key, *a, **k: key == "halving/proxy")
from mmln.sweep import main
raise SystemExit(main(sys.argv[1:]))
"""


def env_for(root: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MMLN_QUIET": "1", "OMP_NUM_THREADS": "1", **extra}


def killed_at(args: list[str], root: Path, at: str, n: int = 1) -> subprocess.CompletedProcess:
    """The sweep in a subprocess that SIGKILLs itself at the n-th call matching `at` (see HOOK)."""
    proc = subprocess.run([sys.executable, "-c", HOOK, *args], cwd=root, capture_output=True, text=True,
                          env=env_for(root, KILL_AT=json.dumps({"at": at, "n": n})), timeout=900)
    assert proc.returncode == -signal.SIGKILL, f"{at}#{n} never reached (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


def outcome(root: Path, uri: str | None = None) -> dict:
    """What a finished halving sweep left: parent, the point runs (by the run folder's id file),
    survivors, best lr, the survivors' weights, RUNNING runs, tags (`uri`: the tracking store, by
    default the sqlite file `root/mlflow.db`)."""
    client = MlflowClient(uri or f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny_halving")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    out = root / "outputs" / "tiny_halving"
    points = {}
    for d in sorted(out.iterdir()):
        if (d / "mlflow_run_id").is_file():
            r = client.get_run((d / "mlflow_run_id").read_text().strip())
            points[d.name] = r
    survivors = sorted(n for n, r in points.items() if r.data.tags.get("halving/state") == "finished")
    weights = {n: load_file(str(out / n / "trainable.safetensors")) for n in survivors}
    return dict(client=client, parents=parents, points=points, survivors=survivors, weights=weights,
                running=[r.info.run_name for r in runs if r.info.status == "RUNNING"],
                states={n: (r.data.tags.get("halving/state"), r.info.status) for n, r in points.items()},
                best=parents[0].data.tags.get("best_lr/layernorm") if parents else None)


def assert_same_sweep(got: dict, ref: dict) -> None:
    assert len(got["parents"]) == 1 and got["parents"][0].info.status == "FINISHED", got["parents"]
    assert not got["running"], f"runs left RUNNING: {got['running']}"
    assert sorted(got["points"]) == sorted(ref["points"]) and len(got["points"]) == len(LRS)
    assert got["survivors"] == ref["survivors"] and got["best"] == ref["best"]
    assert got["states"] == ref["states"], (got["states"], ref["states"])  # pruned ones tagged pruned, KILLED
    for name in ref["survivors"]:
        a, b = ref["weights"][name], got["weights"][name]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    pruned = [n for n, (state, _) in got["states"].items() if state == "pruned"]
    assert len(pruned) == len(LRS) - 1
    for name, r in got["points"].items():  # each proxy once in MLflow, as Optuna holds it
        steps = [m.step for m in got["client"].get_metric_history(r.info.run_id, "halving/proxy")]
        assert len(steps) == len(set(steps)) and steps, (name, steps)


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("halving_ref")
    t0 = time.time()
    assert sweep.main(halving_args(world, root)) == 0
    return dict(root=root, wall=time.time() - t0, **outcome(root))


def finish(args: list[str], root: Path) -> None:
    """Rerun to the end (in a subprocess: the same interpreter state a user's rerun has)."""
    proc = subprocess.run([sys.executable, "-m", "mmln.sweep", *args], cwd=root, capture_output=True, text=True,
                          env=env_for(root), timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


def three_lrs(args: list[str]) -> list[str]:
    """The same sweep over 3 learning rates (rung 0: 3 points, 2 pruned; the survivor's full run)."""
    i = args.index("--lrs")
    return args[: i + 1] + ["1e-2", "3e-3", "1e-3"] + args[i + 1 + len(LRS):]


def test_killed_with_a_rung_scored_and_undecided_summarize_decides_and_a_rerun_finishes(world, tmp_path):
    """The reported failure: killed between "rung scored" and "rung decided", the rerun crashed
    (`Run with id=None not found`) and the pruned points stayed `paused`. Now `--summarize` (which
    trains nothing) decides the rung from the stored proxies: the pruned points are tagged and
    reported pruned, the promoted one is missing (not trained yet), exit 1; a rerun finishes the
    sweep, exit 0, the parent FINISHED, no run left RUNNING; `--summarize` then exits 0."""
    args = three_lrs(halving_args(world, tmp_path))
    killed_at(args, tmp_path, "decide")
    assert sweep.main(args + ["--summarize"]) == 1
    got = outcome(tmp_path)
    assert sorted(s for s, _ in got["states"].values()) == ["promoted", "pruned", "pruned"], got["states"]
    assert not got["running"]
    assert sweep.main(args) == 0
    got = outcome(tmp_path)
    assert sorted(got["states"].values()) == [("finished", "FINISHED"), ("pruned", "KILLED"), ("pruned", "KILLED")]
    assert len(got["parents"]) == 1 and got["parents"][0].info.status == "FINISHED" and not got["running"]
    assert sweep.main(args + ["--summarize"]) == 0
    parent = got["client"].get_run(got["parents"][0].info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/n_failed"] == 0


@pytest.mark.slow
def test_kill_9_at_each_seam_equals_an_uninterrupted_sweep(world, reference, tmp_path):
    """Killed before the first decision, between a decision and the PRUNED state, between the
    decisions and the MLflow tags, and after a proxy's report before its metric: each rerun picks
    up from what the stores hold; the end equals the uninterrupted sweep. (~4 min)"""
    args = halving_args(world, tmp_path)
    for at in ("decide", "pruned", "tags", "proxy"):
        killed_at(args, tmp_path, at)
    finish(args, tmp_path)
    got = outcome(tmp_path)
    assert_same_sweep(got, reference)
    assert sweep.main(args + ["--summarize"]) == 0  # the pruned points are pruned, not missing
    parent = got["client"].get_run(got["parents"][0].info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/n_failed"] == 0


def progress(log: Path) -> list[str]:
    return [x[16:].strip() for x in log.read_text().splitlines() if x.startswith("[sweep ")]


def kill_at_random(args: list[str], root: Path, rng: random.Random, spread: float) -> tuple[int, str]:
    """One run of the sweep, SIGKILLed at a random moment of its progress: after its j-th progress
    line (j in 1..3) and a further uniform(0, `spread`) seconds. The run's exit code (0 if it
    finished first) and its last progress line at the kill."""
    log = root / "kill.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mmln.sweep", *args], cwd=root, env=env_for(root),
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    after = rng.randint(1, 3)
    while proc.poll() is None and len(progress(log)) < after:
        time.sleep(0.05)
    try:
        proc.wait(timeout=rng.uniform(0.0, spread))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    rc = proc.wait()
    return rc, (progress(log) or [""])[-1]


@pytest.mark.slow
def test_kill_9_at_dozens_of_random_moments(world, reference, tmp_path):
    """Seeded random SIGKILLs across the whole sweep (HALVING_KILLS, default 24): each run is killed
    a random 0-3 s after a random one of its first progress lines; a run whose last line is one
    an earlier run reached (no progress) doubles that spread for the next, so every few runs move
    the sweep on and the kills spread over all of it (planning, training, scoring, deciding,
    evaluating) until they are spent; a last rerun finishes. (~6-10 min on a loaded machine)"""
    rng = random.Random(22)
    args = halving_args(world, tmp_path)
    wanted, kills, codes, spread, seen = int(os.environ.get("HALVING_KILLS", "24")), 0, [], 3.0, set()
    while kills < wanted:
        rc, last = kill_at_random(args, tmp_path, rng, spread)
        codes.append(rc)
        print(f"kill {kills + 1}: rc {rc}, {spread:.0f} s spread, after {last[:90]!r}")
        if rc == 0:
            break
        assert rc == -signal.SIGKILL, f"a rerun failed on its own (rc {rc})"
        kills += 1
        spread = min(spread * 2, 24.0) if last in seen else 3.0  # no new progress line: longer until the kill
        seen.add(last)
    print(f"{kills} kills, exit codes {codes}")
    assert kills >= min(wanted, 12), f"the sweep finished after only {kills} kills"
    finish(args, tmp_path)
    assert_same_sweep(outcome(tmp_path), reference)
