"""Claims on halving work in a real Optuna storage (mmln/sweeps/claims.py): one winner among
processes racing for an item, in a journal file, sqlite and PostgreSQL; a dead holder found by its pid on
the same host and by its heartbeat on another; a takeover deletes the dead claim and makes a
frozen holder exit; a failed claim is left alone by its launch and taken over by the next."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from mmln.sweeps.claims import Claims
from mmln.sweeps.study import storage_of
from tests.conftest import ROOT

RACE = r"""
import os, sys, time
from mmln.sweeps.claims import Claims
from mmln.sweeps.study import storage_of
claims = Claims(storage_of(sys.argv[1]), timeout_s=60, beat_s=0.2)
claims.held("study")  # imported and connected: ready
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
c = claims.acquire("study", "t0-r0")
print("won" if c else "lost", flush=True)
if c:
    time.sleep(1.0)  # still holding while the others look
"""


def test_one_of_8_racing_processes_wins_an_item_in_a_journal_file(tmp_path):
    race(str(tmp_path / "optuna.journal"), 8, tmp_path)


def test_one_of_4_racing_processes_wins_an_item_in_an_rdb(rdb_storage, tmp_path):
    """sqlite, then a real PostgreSQL server (skipped where none starts)."""
    race(rdb_storage, 4, tmp_path)


def race(spec: str, n: int, tmp_path) -> None:
    storage_of(spec).get_all_studies()  # the schema exists before the race
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", RACE, spec, str(go)], stdout=subprocess.PIPE, text=True,
                              env={**env, "MMLN_WORKER_HOST": f"node{i}"}) for i in range(n)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready"] * n
    go.touch()  # all at once
    out = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(out) == ["lost"] * (n - 1) + ["won"], out


CONNECT = r"""
import os, sys, time
import optuna, sqlalchemy
from mmln.sweeps.study import storage_of
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
storage_of(sys.argv[1]).get_all_studies()
print("connected", flush=True)
"""


def test_workers_starting_at_once_on_a_new_database_all_connect(rdb_storage, tmp_path):
    """A cluster's first launch: each worker creates Optuna's schema where it is missing. On PostgreSQL
    two at once collided (a duplicate enum type), and that worker exited 1."""
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", CONNECT, rdb_storage, str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(6)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 6
    go.touch()  # all at once
    done = [p.communicate(timeout=120) for p in procs]
    assert [out.strip() for out, _ in done] == ["connected"] * 6, [err[-1500:] for _, err in done]


def test_dead_holders_are_found_and_taken_over(tmp_path, monkeypatch):
    storage = storage_of(str(tmp_path / "c.journal"))
    # same host: a holder whose process is gone is dead at once
    monkeypatch.setenv("MMLN_WORKER_HOST", "a")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)
    mine = Claims(storage, timeout_s=2, beat_s=0.2)
    c = mine.acquire("s", "t1-r0")
    assert c is not None and mine.acquire("s", "t1-r0") is None  # held by a live process: mine
    c.stop.set()
    storage.set_study_user_attr(c.study_id, "pid", pid)  # pretend the holder was that finished process
    c2 = mine.acquire("s", "t1-r0")
    assert c2 is not None and c2.name.endswith("|1")
    assert [s.study_name for s in storage.get_all_studies()] == [c2.name]  # the dead epoch deleted
    # another host: dead once its heartbeat stood still for the timeout (the observer's clock)
    monkeypatch.setenv("MMLN_WORKER_HOST", "b")
    other = Claims(storage, timeout_s=1.5, beat_s=0.2)
    assert other.acquire("s", "t1-r0") is None and other.busy("s") == {"t1-r0"}
    time.sleep(1.0)
    assert other.acquire("s", "t1-r0") is None  # still beating
    c2.stop.set()  # frozen: no more beats
    time.sleep(0.3)
    assert other.acquire("s", "t1-r0") is None  # first sight of the standing beat
    time.sleep(2.0)
    c3 = other.acquire("s", "t1-r0")
    assert c3 is not None and c3.name.endswith("|2") and other.busy("s") == {"t1-r0"}
    other.release(c3)
    assert storage.get_all_studies() == [] and other.busy("s") == set()


def test_a_failed_claim_is_left_to_the_next_launch(tmp_path, monkeypatch):
    storage = storage_of(str(tmp_path / "c.journal"))
    monkeypatch.setenv("MMLN_SWEEP_LAUNCH", "launch-1")
    first = Claims(storage, timeout_s=60, beat_s=0.2)
    first.release(first.acquire("s", "t0-r1"), failed="RuntimeError: boom")
    assert Claims(storage).acquire("s", "t0-r1") is None and first.busy("s") == set()
    monkeypatch.setenv("MMLN_SWEEP_LAUNCH", "launch-2")
    again = Claims(storage, timeout_s=60, beat_s=0.2).acquire("s", "t0-r1")
    assert again is not None and again.name.endswith("|1")


FROZEN = r"""
import sys, time
from mmln.sweeps.claims import Claims
from mmln.sweeps.study import storage_of
storage = storage_of(sys.argv[1])
c = Claims(storage, timeout_s=60, beat_s=0.2).acquire("s", "t0-r0")
print("holding", flush=True)
time.sleep(60)
"""


def test_a_holder_whose_claim_was_taken_over_exits(tmp_path):
    """A worker judged dead while alive (it froze past the timeout) must not go on training beside
    the one that took its point: at its next heartbeat it finds its claim gone and exits."""
    spec = str(tmp_path / "c.journal")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMLN_WORKER_HOST": "frozen"}
    proc = subprocess.Popen([sys.executable, "-c", FROZEN, spec], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "holding"
    storage = storage_of(spec)
    held = Claims(storage).held("s")["t0-r0"][1]
    storage.delete_study(held._study_id)  # what a taker does to the claim it judged dead
    assert proc.wait(timeout=30) == 3
    assert "taken over" in proc.stdout.read()


def test_the_default_study_storage_is_a_journal_unless_an_old_sweep_has_its_sqlite_file(tmp_path):
    """New sweeps get `optuna.journal` in the experiment's folder (every worker that shares the folder
    shares the study); a sweep begun before keeps the `optuna.db` beside its sqlite MLflow store, so
    an upgrade does not start its studies over."""
    from mmln.sweeps.study import default_storage

    uri, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "outputs" / "exp"
    assert default_storage(uri, out) == str(out / "optuna.journal") and out.is_dir()
    assert default_storage("http://mlflow-host:5000", out) == str(out / "optuna.journal")
    (tmp_path / "optuna.db").touch()
    assert default_storage(uri, out) == f"sqlite:///{tmp_path / 'optuna.db'}"
