"""One sweep per config at a time (issue 22 item 3), with real concurrent `python -m mmln.sweep`
processes: the same sweep started twice is refused (exit 2, one line naming the lock and its
holder); another sweep over the same points waits for each point another process holds, then finds
it done: every point is trained once, every loss step logged once, nothing left RUNNING; a lock is
free again the moment its holder is killed (kill -9; tests/test_halving_kills.py reruns killed
sweeps)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mmln.base.locks import Busy, exclusive
from tests.conftest import ROOT
from tests.test_sweep import child_runs, sweep_args, world  # noqa: F401  (world: a module fixture)


def start(args: list[str], cwd: Path, log: Path | None = None) -> subprocess.Popen:
    """`python -m mmln.sweep ARGS`, its stderr to `log` (else a pipe)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMLN_QUIET": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "mmln.sweep", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w") if log else subprocess.PIPE, text=True, start_new_session=True)


def wait_for(path: Path, text: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not (path.is_file() and text in path.read_text()):
        assert time.time() < deadline, f"no {text!r} in {path}"
        time.sleep(0.2)


def test_a_lock_is_exclusive_across_processes_and_free_after_kill_9(tmp_path):
    lock = tmp_path / "x.lock"
    code = "import sys, time; from mmln.base.locks import exclusive\nwith exclusive(__import__('pathlib').Path(sys.argv[1])):\n" \
           "    print('held', flush=True); time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match=f"pid {proc.pid} on .* holds {lock}"):
            with exclusive(lock, wait=False):
                pass
    finally:
        proc.kill()
        proc.wait()
    with exclusive(lock, wait=False):  # the kernel released it with the killed process
        assert f"pid {os.getpid()}" in lock.read_text()


def test_two_concurrent_sweeps_of_one_config_train_each_point_once(world, tmp_path):
    """The test holds point 0's lock (as a sweep training it would) while three sweeps start: A,
    then A again (refused: the same sweep is running), then B, another sweep of the same points
    (`--sweep-id other`). A and B both wait at point 0; released, one trains it and the other finds
    it done, and so on for point 1."""
    db = tmp_path / "mlflow.db"
    args = sweep_args(world, db)
    out = tmp_path / "outputs" / "tiny_sweep"
    logs = {k: tmp_path / f"{k}.log" for k in ("a", "b")}
    with exclusive(out / ".locks" / "layernorm-lr0.001.lock"):
        a = start(args, tmp_path, logs["a"])
        wait_for(logs["a"], "waiting for")
        again = start(args, tmp_path)
        _, err = again.communicate(timeout=600)
        assert again.returncode == 2, err[-2000:]
        lines = [x for x in err.splitlines() if x.strip()]
        assert len(lines) == 1 and "is running already" in lines[0] and f"pid {a.pid}" in lines[0], err
        b = start(args + ["--sweep-id", "other"], tmp_path, logs["b"])
        wait_for(logs["b"], "waiting for")
    assert a.wait(timeout=900) == 0 and b.wait(timeout=900) == 0, logs["a"].read_text()[-3000:] + logs["b"].read_text()[-3000:]
    text = logs["a"].read_text() + logs["b"].read_text()
    for name in ("layernorm-lr0.001", "layernorm-lr0.0001"):
        assert text.count(f"{name}: training") == 1, text  # by exactly one of the two
    client = MlflowClient(f"sqlite:///{db}")
    runs = child_runs(client)
    points = [r for r in runs.values() if r.data.tags.get("kind") != "sweep"]
    parents = [r for r in runs.values() if r.data.tags.get("kind") == "sweep"]
    assert sorted(r.info.run_name for r in points) == ["layernorm-lr0.0001", "layernorm-lr0.001"]  # no duplicate run
    assert all(r.info.status == "FINISHED" for r in runs.values()) and len(parents) == 2
    for r in points:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")]
        assert sorted(steps) == sorted(set(steps)) and len(steps) == 3, steps  # max_steps=3, each once
        assert set(r.data.tags["sweeps"].split(",")) == {p.data.tags["sweep_id"] for p in parents}  # both sweeps


def test_sigterm_stops_a_sweep_in_one_line_and_marks_it_killed(world, tmp_path):
    """A real SIGTERM to `python -m mmln.sweep` while its first point trains (as SLURM sends before a
    preemption): the point saves a resumable checkpoint, the sweep prints one `stopped:` line and no
    traceback, exits 128 + SIGTERM, and both the point's run and the sweep's parent run are KILLED."""
    import signal

    from mlflow import MlflowClient

    db = tmp_path / "mlflow.db"
    proc = start(sweep_args(world, db) + ["train.max_steps=60"], tmp_path)
    deadline = time.time() + 600
    while not list((tmp_path / "outputs").glob("**/checkpoints/last.ckpt")) and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint within 600 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    stopped = [x for x in err.splitlines() if "stopped" in x]
    assert len(stopped) == 1 and "SIGTERM received: checkpoint saved at step" in stopped[0], err[-3000:]
    statuses = sorted(r.info.status for r in child_runs(MlflowClient(f"sqlite:///{db}")).values())
    assert statuses.count("KILLED") == 2 and "RUNNING" not in statuses, statuses
