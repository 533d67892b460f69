"""Many workers on one halving study (issue 27 items 1-2 and its "two machines" condition): workers
in separate processes (SLURM array tasks run locally, or `--workers N`), each claiming points in
the shared Optuna storage; workers killed with SIGKILL mid-rung and at a rung decision; workers
started from another working directory. Each end must equal one uninterrupted process: the same
survivors and best lr, survivor weights `torch.equal`, every `train/loss` step logged once (no
point trained twice at once), each proxy once, the parent FINISHED, nothing left RUNNING.

Workers are told apart as hosts (`MMLN_WORKER_HOST`), so a dead one is found by its heartbeat
stopping, as on a cluster, not by its pid.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmln import sweep
from mmln.sweeps.claims import PREFIX
from mmln.sweeps.study import storage_of
from tests.conftest import ROOT, TINY
from tests.test_halving import LRS, halving_args, overrides, world  # noqa: F401  (world: a module fixture)
from tests.test_halving_kills import assert_same_sweep, env_for, outcome, reference, three_lrs  # noqa: F401

FAST = ["--heartbeat", "0.5", "--heartbeat-timeout", "4"]
# SIGKILL the first process (of all that load it) that asks the pruner for a decision: a worker
# killed at a rung decision, holding the study's `settle` claim
DECIDE_KILL = """
import os, signal
if os.environ.get("KILL_AT_DECISION"):
    import optuna
    orig = optuna.trial.Trial.should_prune
    def should_prune(self, *a, **k):
        try:
            os.close(os.open(os.environ["KILL_AT_DECISION"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return orig(self, *a, **k)
        os.kill(os.getpid(), signal.SIGKILL)
    optuna.trial.Trial.should_prune = should_prune
"""


def journal(root: Path) -> Path:
    return root / "outputs" / "tiny_halving" / "optuna.journal"


def rung0_promoted(ref_root: Path) -> list[float]:
    """The lrs the reference promoted at rung 0 (they train rung 1)."""
    import optuna

    storage = storage_of(str(journal(ref_root)))
    name = next(n for n in optuna.get_all_study_names(storage) if not n.startswith(PREFIX))
    return sorted(t.params["lr"] for t in optuna.load_study(study_name=name, storage=storage).trials
                  if t.user_attrs.get("rung0") == "promoted")


def pause_in_rung1(lr: float) -> list[str]:
    """The point of `lr` sleeps when its step 3 begins (in rung 1: steps 1 -> 3), after writing
    `paused-2` in its run folder: a test kills its worker there. `debug` stays out of the hash."""
    return ["--point-overrides", f"lr={lr:g}:debug.pause_at_steps=[2]"]


def run_dir_of(w: Path, root: Path, lr: float) -> Path:
    return sweep.plan(str(TINY), ["layernorm"], [lr], overrides(w, root))[0].run_dir


def kill_paused(run_dir: Path, deadline_s: float = 600) -> int:
    """SIGKILL the process group (the array task) of the worker paused in `run_dir`; its pid."""
    marker = run_dir / "paused-2"
    end = time.time() + deadline_s
    while not marker.is_file() or not marker.read_text().strip():
        assert time.time() < end, f"{marker} never appeared"
        time.sleep(0.05)
    pid = int(marker.read_text())
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    return pid


def losses_once(got: dict) -> None:
    """Every point's `train/loss` history has each step once (two workers never trained it at once,
    a resumed point did not log a step again)."""
    for name, r in got["points"].items():
        steps = [m.step for m in got["client"].get_metric_history(r.info.run_id, "train/loss")]
        assert steps and len(steps) == len(set(steps)), (name, sorted(steps))


def test_two_local_workers_one_killed_at_a_decision_decide_as_one_process(world, tmp_path):
    """`--workers 2` on 3 lrs: one worker is SIGKILLed at the rung decision (holding `settle`); the
    other (its pid check finds the holder gone) decides, trains the survivor to the end, and the
    launcher summarizes: exit 0, the rung decided by the synchronous rule on the stored proxies,
    each step and proxy logged once, the parent FINISHED, nothing RUNNING, no claim left."""
    two_workers_one_killed_at_a_decision(world, tmp_path, str(journal(tmp_path)))


@pytest.mark.slow
def test_two_workers_on_postgresql_and_an_mlflow_server(postgres, world, tmp_path):
    """The test above as a cluster runs it: the study in a real PostgreSQL server, the runs behind an
    `mlflow server` on PostgreSQL (skipped where no PostgreSQL server starts). (~100 s)"""
    from tests.pg import mlflow_server

    study, store = postgres.create_database(), postgres.create_database()
    with mlflow_server(store, tmp_path / "server") as base:
        two_workers_one_killed_at_a_decision(world, tmp_path, study, [f"tracking.uri={base}"])


def two_workers_one_killed_at_a_decision(w: Path, root: Path, storage: str, extra: list[str] = ()) -> None:
    """The test above on the study storage `storage` (a journal file's path or an RDB URL such as
    a PostgreSQL server's), `extra` overrides (e.g. `tracking.uri=http://...` for an MLflow server)."""
    import optuna

    from tests.test_halving import synchronous

    hooks = root / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(DECIDE_KILL)
    args = three_lrs(halving_args(w, root)) + [*extra] + FAST + ["--workers", "2", "--study-storage", storage]
    env = env_for(root, PYTHONPATH=f"{hooks}:{ROOT}", KILL_AT_DECISION=str(root / "decision-killed"))
    proc = subprocess.run([sys.executable, "-m", "mmln.sweep", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (root / "decision-killed").exists() and "workers ended: exit codes" in proc.stderr
    codes = proc.stderr.split("workers ended: exit codes")[1].split("\n")[0].split()
    assert sorted(codes) == [str(-signal.SIGKILL), "0"], codes  # the launcher itself was not the decider
    names = optuna.get_all_study_names(storage_of(storage))
    assert len(names) == 1, names  # every claim released or cleared
    trials = optuna.load_study(study_name=names[0], storage=storage_of(storage)).trials
    kept = {t.params["lr"] for t in trials if t.user_attrs.get("rung0") == "promoted"}
    assert kept == synchronous({t.params["lr"]: -t.intermediate_values[1] for t in trials}, 3)
    got = outcome(root, next((e.split("=", 1)[1] for e in extra if e.startswith("tracking.uri=")), None))
    assert got["survivors"] and len(got["parents"]) == 1 and got["parents"][0].info.status == "FINISHED"
    assert not got["running"] and sorted(s for s, _ in got["states"].values()) == ["finished", "pruned", "pruned"]
    losses_once(got)
    for name, r in got["points"].items():
        steps = [m.step for m in got["client"].get_metric_history(r.info.run_id, "halving/proxy")]
        assert steps and len(steps) == len(set(steps)), (name, steps)


@pytest.mark.slow
def test_three_array_tasks_one_killed_mid_rung_one_at_a_decision_equal_one_process(world, reference, tmp_path):
    """`--launcher slurm --search halving --workers 3` writes an array of 3 worker tasks; the tasks
    run here (bash, SLURM_ARRAY_TASK_ID set, each its own "host"). One is SIGKILLed at the first
    rung decision (holding the `settle` claim), one in the middle of rung 1 (its point paused at
    step 2 of 3); the third takes both over after the heartbeat timeout and finishes. The summary
    job then ends the parent. (~3-5 min on a loaded machine)"""
    victim = rung0_promoted(reference["root"])[0]
    args = halving_args(world, tmp_path) + FAST + pause_in_rung1(victim)
    assert sweep.main(args + ["--launcher", "slurm", "--workers", "3"]) == 0
    out = tmp_path / "outputs" / "tiny_halving"
    array = next(out.glob("sweep_*[0-9a-f].sbatch"))
    summary = next(out.glob("sweep_*_summary.sbatch"))
    text = array.read_text()
    assert "#SBATCH --array=0-2" in text and text.rstrip().endswith("--worker") and "--only-index" not in text
    assert f"--study-storage {journal(tmp_path)}" in text and "--search halving" in text
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(DECIDE_KILL)
    logs, tasks = [], []
    for i in range(3):
        env = env_for(tmp_path, SLURM_ARRAY_TASK_ID=str(i), SLURM_ARRAY_JOB_ID="4242", MMLN_WORKER_HOST=f"node{i}",
                      PYTHONPATH=f"{hooks}:{ROOT}", KILL_AT_DECISION=str(tmp_path / "decision-killed"))
        logs.append(open(tmp_path / f"task{i}.log", "w"))
        tasks.append(subprocess.Popen(["bash", str(array)], env=env, stdout=logs[-1], stderr=subprocess.STDOUT,
                                      start_new_session=True))
    killed = kill_paused(run_dir_of(world, tmp_path, victim))
    codes = [t.wait(timeout=900) for t in tasks]
    log = "".join((tmp_path / f"task{i}.log").read_text()[-3000:] for i in range(3))
    assert (tmp_path / "decision-killed").exists(), log
    assert sorted(codes) == [-signal.SIGKILL, 0, 128 + signal.SIGKILL], (codes, log)
    assert killed not in [t.pid for t in tasks]  # the python worker inside the killed task
    proc = subprocess.run(["bash", str(summary)], env=env_for(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = outcome(tmp_path)
    assert_same_sweep(got, reference)
    losses_once(got)
    assert "taken over" not in log  # no live worker was judged dead


@pytest.mark.slow
def test_two_working_directories_share_one_sweep(world, reference, tmp_path):
    """A sweep started in one working directory (its own copy of the config) is SIGKILLed in the
    middle of rung 1; a worker started from a second working directory, as on another machine
    sharing the storage (journal file, MLflow store, run folders), takes its point over after the
    heartbeat timeout and finishes the sweep; `--summarize` from there ends it as one process
    would have."""
    victim = rung0_promoted(reference["root"])[0]
    dirs = [tmp_path / "machine_a", tmp_path / "machine_b"]
    for d in dirs:
        d.mkdir()
        (d / "tiny.yaml").write_text(TINY.read_text())
    args = [a if a != str(TINY) else "tiny.yaml" for a in halving_args(world, tmp_path)] + FAST + pause_in_rung1(victim)
    a = subprocess.Popen([sys.executable, "-m", "mmln.sweep", *args], cwd=dirs[0], start_new_session=True,
                         env=env_for(tmp_path, MMLN_WORKER_HOST="machine-a"), stdout=subprocess.DEVNULL,
                         stderr=open(tmp_path / "a.log", "w"))
    kill_paused(run_dir_of(world, tmp_path, victim))
    assert a.wait(timeout=60) == -signal.SIGKILL
    env = env_for(tmp_path, MMLN_WORKER_HOST="machine-b")
    b = subprocess.run([sys.executable, "-m", "mmln.sweep", *args, "--worker"], cwd=dirs[1], env=env,
                       capture_output=True, text=True, timeout=900)
    assert b.returncode == 0, b.stderr[-3000:]
    s = subprocess.run([sys.executable, "-m", "mmln.sweep", *args, "--summarize"], cwd=dirs[1], env=env,
                       capture_output=True, text=True, timeout=600)
    assert s.returncode == 0, s.stderr[-3000:]
    got = outcome(tmp_path)
    assert_same_sweep(got, reference)
    losses_once(got)
    assert not list(dirs[0].glob("outputs")) and not list(dirs[1].glob("outputs"))  # nothing written per machine


def test_a_slurm_halving_array_is_workers_and_wrong_uses_are_one_line(world, tmp_path, capsys):
    """The array's tasks are workers on the study (no --only-index), sharing the journal file by its
    absolute path, with the study's settings; the summary job summarizes. Wrong uses: one line, exit 2."""
    args = halving_args(world, tmp_path) + ["--heartbeat", "5", "--heartbeat-timeout", "60"]
    assert sweep.main(args + ["--launcher", "slurm", "--workers", "4", "--study-storage", "shared.journal"]) == 0
    out = tmp_path / "outputs" / "tiny_halving"
    array = next(out.glob("sweep_*[0-9a-f].sbatch")).read_text()
    summary = next(out.glob("sweep_*_summary.sbatch")).read_text()
    task = array.rstrip().splitlines()[-1]
    assert "#SBATCH --array=0-3" in array and task.endswith(" --worker") and "--only-index" not in array
    for part in ("--search halving", "--eta 3", "--halving-rule sync", "--proxy-metric val/loss", "--heartbeat 5",
                 "--heartbeat-timeout 60", f"--study-storage {Path.cwd() / 'shared.journal'}"):
        assert part in task and part in summary, part
    assert summary.rstrip().endswith("--summarize") and "--worker" not in summary
    capsys.readouterr()
    assert sweep.main(["--config", str(TINY), "--lrs", "1e-3", "--workers", "2", *overrides(world, tmp_path)]) == 2
    assert "--workers / --worker: only with --search halving" in capsys.readouterr().err
    other = tmp_path / "other"
    assert sweep.main(halving_args(world, other) + ["--worker"]) == 2  # no sweep started there
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no parent run" in err[0] and "start the sweep first" in err[0]
    assert sweep.main(args + ["--heartbeat", "60"]) == 2
    assert "0 < heartbeat < timeout" in capsys.readouterr().err
