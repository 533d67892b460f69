"""Fault injection on tiny runs: malicious and damaged checkpoints, non-finite training, failures after
training, signals, configs that cannot train. Each test is a finding that failed before the fix."""
from __future__ import annotations

import functools
import http.server
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from mmln.fit import main
from mmln.model.errors import CheckpointError
from tests.conftest import ROOT, TINY
from tests.test_fit import cfg_for, stage_overrides


class Evil:
    """A pickle that runs code when loaded (torch.load(weights_only=False) would touch the marker)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path, **extra) -> Path:
    torch.save({"state_dict": {"model.mm_projector.weight": Evil(marker)}, **extra}, path)
    return path


def fit_main(world, tmp_path, *extra: str) -> int:
    return main(["--config", str(TINY), *stage_overrides(world, tmp_path, "instruct", *extra)])


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_malicious_pickles_never_run_on_any_load_path(tiny_world, tmp_path, capsys):
    from mmln.model.connector import connector_state_from_file
    from mmln.model.errors import CheckpointError

    marker = tmp_path / "pwned"
    evil = plant(tmp_path / "mm_projector.bin", marker, loops={}, global_step=1, optimizer_states=[])
    with pytest.raises(CheckpointError, match="refused: loading it would run code"):
        connector_state_from_file(evil)  # model.connector.path
    # --ckpt of export (evaluate and analyze read it through the same read_trainable)
    from mmln.export import main as export_main

    assert export_main(["--config", str(TINY), "--ckpt", str(evil), "--out", str(tmp_path / "x"),
                        f"model.llm.tokenizer={tiny_world[2]}"]) == 2
    assert "mm_projector.bin" in one_error_line(capsys.readouterr().err)
    # resume= a file, and resume= a URL
    assert fit_main(tiny_world, tmp_path, f"resume={evil}") == 2
    assert "would run code" in one_error_line(capsys.readouterr().err)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/mm_projector.bin"
        assert fit_main(tiny_world, tmp_path, f"resume={url}", "run_name=from_url") == 2
        assert "would run code" in one_error_line(capsys.readouterr().err)
    finally:
        server.shutdown()
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the planted pickle does run when loaded unsafely
    assert marker.exists()


@pytest.mark.parametrize("kind", ["garbage", "half", "empty", "plain_pickle", "empty_dict"])
def test_a_damaged_last_ckpt_is_one_line_naming_the_file(tiny_world, tmp_path, capsys, kind):
    ckpt = tmp_path / "outputs/tiny_ln/damaged/checkpoints/last.ckpt"
    ckpt.parent.mkdir(parents=True)
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.ones(4096)}, "loops": {}, "global_step": 3, "optimizer_states": []}, whole)
    data = {"garbage": random.Random(0).randbytes(3000), "half": whole.read_bytes()[:8000], "empty": b"",
            "plain_pickle": pickle.dumps({"a": 1}), "empty_dict": None}[kind]
    torch.save({}, ckpt) if data is None else ckpt.write_bytes(data)
    assert fit_main(tiny_world, tmp_path, "run_name=damaged") == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(ckpt) in line and "delete it" in line and "weights_only=False" not in line, line


def test_random_bytes_are_always_a_damaged_checkpoint(tmp_path):
    # torch's weights-only unpickler meets random bytes with UnpicklingError mostly, but also
    # IndexError, KeyError, UnicodeDecodeError or RuntimeError (about 8% of 3,000 tries): each must
    # be the one-line error, never a traceback
    from mmln.model.checkpoint import torch_load

    path = tmp_path / "last.ckpt"
    rnd = random.Random(1)
    for _ in range(300):
        path.write_bytes(rnd.randbytes(rnd.randint(1, 3000)))
        with pytest.raises(CheckpointError, match="is damaged or not a torch checkpoint"):
            torch_load(path, "resume checkpoint")


@pytest.mark.parametrize("override,needle", [("train.lr=-1e-3", "train.lr"), ("train.lr=nan", "train.lr"),
                                             ("train.epochs=0", "train.epochs"), ("train.max_steps=0", "train.max_steps")])
def test_config_values_that_cannot_train_exit_2(capsys, override, needle):
    assert main(["--config", str(TINY), override]) == 2
    assert needle in one_error_line(capsys.readouterr().err)


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"inherit: {TINY}\ntrain:\n  lr: 1e-3\n  epochs: [1\n")
    assert main(["--config", str(bad)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{bad}:" in line and "YAML syntax error" in line, line


def run_of(tmp_path, name: str):
    run_id = (tmp_path / "outputs/tiny_ln" / name / "mlflow_run_id").read_text()
    return MlflowClient().get_run(run_id)


def test_a_diverged_run_stops_at_the_first_nonfinite_step_and_fails(tiny_world, tmp_path, capsys):
    common = ["train.lr=1e20", "train.max_steps=6", "train.save_every_n_steps=1", "train.warmup_ratio=0"]
    assert fit_main(tiny_world, tmp_path, *common, "run_name=diverged") == 1
    assert "non-finite training at step" in capsys.readouterr().err
    run = run_of(tmp_path, "diverged")
    step = int(run.data.tags["failed_step"])
    assert run.info.status == "FAILED" and "non-finite" in run.data.tags["failure_reason"]
    run_dir = tmp_path / "outputs/tiny_ln/diverged"
    assert not (run_dir / "trainable.safetensors").exists()
    ckpt = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)  # the last good one
    assert ckpt["global_step"] == step - 1 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())

    # skip_step: bad steps are skipped (weights unchanged) until more than the limit were
    assert fit_main(tiny_world, tmp_path, *common, "run_name=skipping", "train.nonfinite=skip_step",
                    "train.nonfinite_limit=2") == 1
    assert "more than train.nonfinite_limit=2" in run_of(tmp_path, "skipping").data.tags["failure_reason"]
    assert int(run_of(tmp_path, "skipping").data.tags["failed_step"]) == step + 2


def test_a_failed_export_is_a_failed_run(tiny_world, tmp_path):
    run_dir = tmp_path / "outputs/tiny_ln/noexport"
    (run_dir / "trainable.safetensors").mkdir(parents=True)  # stands in for a full disk / no permission
    with pytest.raises(OSError):
        fit_main(tiny_world, tmp_path, "train.max_steps=1", "run_name=noexport")
    run = run_of(tmp_path, "noexport")
    assert run.info.status == "FAILED" and "Error" in run.data.tags["error"]


def test_sigterm_saves_a_checkpoint_marks_killed_exits_nonzero_and_resumes(tiny_world, tmp_path):
    """A real signal to a real `python -m mmln.fit` (about 30 s: two processes start)."""
    args = stage_overrides(tiny_world, tmp_path, "instruct", "run_name=term", "train.max_steps=12",
                           "train.save_every_n_steps=2", "tune.strategy=lora", "tune.lora.r=4")
    cmd = [sys.executable, "-m", "mmln.fit", "--config", str(TINY), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = tmp_path / "outputs/tiny_ln/term/checkpoints/last.ckpt"
    deadline = time.time() + 600
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM received: checkpoint saved at step" in err
    run = run_of(tmp_path, "term")
    assert run.info.status == "KILLED"
    step = torch.load(ckpt, weights_only=True)["global_step"]
    assert 2 <= step < 12
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert run_of(tmp_path, "term").info.status == "FINISHED"
    history = MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(12))  # every step once


def test_kill_9_mid_epoch_and_right_after_an_epoch_end_checkpoint_resumes_bit_exact(tiny_world, tmp_path):
    """Real `kill -9` by PID, twice: mid-epoch, and right after the checkpoint of an epoch's last step
    (the next epoch's iterator is already built); LoRA with dropout on. About a minute: 3 processes."""
    from safetensors.torch import load_file

    from mmln.fit import fit

    base = ["tune.strategy=lora", "tune.lora.r=4", "tune.lora.dropout=0.2", "train.lr=1e-3", "data.train.limit=32",
            "train.epochs=2", "train.save_every_n_steps=2"]  # 32 records / 8 -> 4 steps an epoch, accumulation 2
    ref = fit(cfg_for(tiny_world, tmp_path, "instruct", *base, "run_name=straight"))
    args = stage_overrides(tiny_world, tmp_path, "instruct", *base, "run_name=killed", "debug.pause_at_steps=[3,4]")
    cmd = [sys.executable, "-m", "mmln.fit", "--config", str(TINY), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run_dir = tmp_path / "outputs/tiny_ln/killed"
    for step in (3, 4):  # the checkpoint of step 2, then the one of step 4 (the end of epoch 0), is the last
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while not (run_dir / f"paused-{step}").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["global_step"] == (2 if step == 3 else 4)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = load_file(str(ref.run_dir / "trainable.safetensors")), load_file(str(run_dir / "trainable.safetensors"))
    assert a.keys() == b.keys() and len(a) > 4
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    run = run_of(tmp_path, "killed")
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in MlflowClient().get_metric_history(run.info.run_id, "train/loss")) == list(range(8))
    assert not list((run_dir / "checkpoints").glob(".*"))  # no temp file left behind


def test_resume_never_moves_old_checkpoints_aside(tiny_world, tmp_path, capsys):
    old = tmp_path / "outputs/tiny_ln/again/checkpoints/last.ckpt"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"the first run's")
    assert fit_main(tiny_world, tmp_path, "run_name=again", "resume=never", "train.max_steps=1") == 0
    aside = list(old.parent.parent.glob("checkpoints.old-*/last.ckpt"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"the first run's"
    assert str(aside[0].parent) in capsys.readouterr().err
    assert not list(old.parent.glob("last-v*.ckpt"))


def test_an_unreachable_tracking_server_fails_in_seconds_naming_it(tiny_world, tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    t0 = time.time()
    assert fit_main(tiny_world, tmp_path, "run_name=offline") == 1
    assert time.time() - t0 < 20
    assert f"http://127.0.0.1:{port} is not reachable" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "outputs/tiny_ln/offline/mlflow_run_id").exists()  # stopped before the run began
    # opted in: training goes on into a local store
    assert fit_main(tiny_world, tmp_path, "run_name=offline", "tracking.offline=true", "train.max_steps=1") == 0
    local = f"sqlite:///{tmp_path / 'outputs/mlflow-offline.db'}"
    run = MlflowClient(local).get_run((tmp_path / "outputs/tiny_ln/offline/mlflow_run_id").read_text())
    assert run.info.status == "FINISHED" and "train/loss" in run.data.metrics


def test_resume_refuses_a_changed_config_naming_the_keys(tiny_world, tmp_path, capsys):
    from mmln.config import to_yaml

    run_dir = tmp_path / "outputs/tiny_ln/changed"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}, "loops": {}, "global_step": 1, "optimizer_states": []},
               run_dir / "checkpoints/last.ckpt")
    (run_dir / "config.yaml").write_text(to_yaml(cfg_for(tiny_world, tmp_path, "instruct", "run_name=changed",
                                                         "train.lr=1e-3", "data.num_workers=3")))
    assert fit_main(tiny_world, tmp_path, "run_name=changed", "train.lr=5e-4", "quiet=false") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "train.lr: 0.001 -> 0.0005" in line and "resume_changed_config=true" in line
    assert "num_workers" not in line and "quiet" not in line  # volatile: they do not change the result


def test_data_num_workers_does_not_change_a_dropout_run(tiny_world, tmp_path):
    from safetensors.torch import load_file

    from mmln.fit import fit

    base = ["tune.strategy=lora", "tune.lora.r=4", "tune.lora.dropout=0.2", "train.lr=1e-3", "data.train.limit=16",
            "train.epochs=2"]  # 2 steps an epoch: an epoch boundary with a persistent worker
    a = fit(cfg_for(tiny_world, tmp_path, "instruct", *base, "run_name=w0"))
    b = fit(cfg_for(tiny_world, tmp_path, "instruct", *base, "run_name=w1", "data.num_workers=1"))
    x, y = load_file(str(a.run_dir / "trainable.safetensors")), load_file(str(b.run_dir / "trainable.safetensors"))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_three_fits_at_once_into_a_new_sqlite_store_lose_nothing(tiny_world, tmp_path):
    """3 processes started together into a store that does not exist yet, twice (about a minute)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/fresh/mlflow.db"}
    for round_ in range(2):
        if round_ == 1:  # a new store again
            env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/fresh2/mlflow.db"
        procs = [subprocess.Popen(
            [sys.executable, "-m", "mmln.fit", "--config", str(TINY),
             *stage_overrides(tiny_world, tmp_path, "instruct", f"run_name=c{round_}{i}", "train.max_steps=2")],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(3)]
        errs = [p.communicate(timeout=300)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], [e[-2000:] for e in errs]
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        runs = client.search_runs([client.get_experiment_by_name("tiny_ln").experiment_id])
        assert sorted(r.info.run_name for r in runs) == [f"c{round_}{i}" for i in range(3)]
        assert all(r.info.status == "FINISHED" for r in runs)
        assert [len(client.get_metric_history(r.info.run_id, "train/loss")) for r in runs] == [2, 2, 2]


def test_a_locked_sqlite_store_is_waited_out_and_the_metric_arrives(tmp_path, capsys):
    """Another connection holds the store in an EXCLUSIVE transaction longer than MLflow's own 20 s
    sqlite busy wait, so the run's `log_batch` really fails with "database is locked"; the tracking
    layer retries and the metric arrives. About 22 s, nearly all of it asleep (MLflow's busy timeout
    is a fixed 20 s, and a shorter hold is waited out by MLflow itself, without any error)."""
    import sqlite3

    from mmln.tracking import make_logger

    db = tmp_path / "locked/mlflow.db"
    uri = f"sqlite:///{db}"
    logger = make_logger("locks", "r", uri, {"run_dir": str(tmp_path)})
    logger.log_metrics({"train/loss": 1.0}, step=0)
    held, released = threading.Event(), threading.Event()

    def hold():
        con = sqlite3.connect(db, isolation_level=None, timeout=60)
        con.execute("BEGIN EXCLUSIVE")
        held.set()
        time.sleep(21.5)
        con.execute("ROLLBACK")
        con.close()
        released.set()

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30)
    start = time.monotonic()
    logger.log_metrics({"train/loss": 2.0}, step=1)
    waited = time.monotonic() - start
    holder.join()
    assert released.is_set() and waited > 20, waited
    assert "MLflow store locked during log_batch; retry 1/" in capsys.readouterr().err
    logger.end("FINISHED")
    client = MlflowClient(uri)
    history = client.get_metric_history(logger.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 2.0)]
    assert client.get_run(logger.run_id).info.status == "FINISHED"


WRITER = """
import itertools, os, sys, tempfile, torch
from mmln.lit.safety import SafeCheckpointIO
assert tempfile.gettempdir() == os.environ["TMPDIR"], tempfile.gettempdir()
io = SafeCheckpointIO()
for step in itertools.count(1):
    io.save_checkpoint({"global_step": step, "w": torch.full((int(sys.argv[2]),), float(step))}, sys.argv[1])
"""


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a tmpfs at /dev/shm")
def test_kill_9_mid_checkpoint_commit_with_tmpdir_elsewhere_keeps_the_last_good_one(tmp_path):
    """The real checkpoint writer (`SafeCheckpointIO`, what the Trainer uses) in a process whose
    TMPDIR is a tmpfs, i.e. another filesystem than the checkpoint's: kill -9 while a 64 MB checkpoint
    is being written, 3 times. `last.ckpt` is always a whole earlier checkpoint, and nothing was
    staged in TMPDIR (Lightning's default writer staged there and copied, leaving 0 bytes)."""
    import tempfile

    from mmln.model.checkpoint import torch_load

    ckpt = tmp_path / "run/checkpoints/last.ckpt"
    ckpt.parent.mkdir(parents=True)
    shm = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="mmln-test-"))
    try:
        assert os.stat(shm).st_dev != os.stat(ckpt.parent).st_dev  # really another filesystem
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(shm)}
        n = 16 * 2**20
        for round_ in range(3):
            proc = subprocess.Popen([sys.executable, "-c", WRITER, str(ckpt), str(n)], env=env,
                                    stderr=subprocess.PIPE, text=True)
            deadline, mid_write = time.time() + 120, False
            while proc.poll() is None and time.time() < deadline:
                if ckpt.exists() and list(ckpt.parent.glob(".last.ckpt.*")):  # a commit is under way
                    mid_write = True
                    break
                time.sleep(0.002)
            assert mid_write and proc.poll() is None, proc.stderr.read()[-2000:]
            time.sleep(0.01 * round_)  # a little further into that write
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
            assert ckpt.stat().st_size > n * 4
            state = torch_load(ckpt)
            assert state["global_step"] >= 1 and torch.equal(state["w"], torch.full((n,), float(state["global_step"])))
            staged = [p for p in shm.rglob("*") if p.is_file() and ("ckpt" in p.name or p.stat().st_size > 2**20)]
            assert not staged  # nothing staged on the other filesystem
            for tmp in ckpt.parent.glob(".last.ckpt.*"):  # what a resumed run removes
                tmp.unlink()
    finally:
        import shutil

        shutil.rmtree(shm, ignore_errors=True)


def test_a_resumed_run_closes_orphan_running_runs_of_its_folder(tiny_world, tmp_path):
    """A real fit killed -9 leaves its MLflow run RUNNING; an earlier process killed before it wrote
    `mlflow_run_id` left another RUNNING run of the same folder. The resume finishes the first and
    marks the orphan KILLED; a RUNNING run of another folder is left alone (about 25 s: 2 processes)."""
    from mmln.fit import fit
    from mmln.tracking import make_logger

    base = ["run_name=orphan", "train.max_steps=4", "train.save_every_n_steps=2"]
    args = stage_overrides(tiny_world, tmp_path, "instruct", *base, "debug.pause_at_steps=[3]")
    cmd = [sys.executable, "-m", "mmln.fit", "--config", str(TINY), *args]
    run_dir = tmp_path / "outputs/tiny_ln/orphan"
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (run_dir / "paused-3").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    killed = run_of(tmp_path, "orphan")
    assert killed.info.status == "RUNNING"  # what a kill -9 leaves
    uri = os.environ["MLFLOW_TRACKING_URI"]
    orphan = make_logger("tiny_ln", "orphan", uri, {"run_dir": str(run_dir.resolve())})
    other = make_logger("tiny_ln", "elsewhere", uri, {"run_dir": str(tmp_path / "elsewhere")})
    orphan_id, other_id = orphan.run_id, other.run_id  # created, RUNNING, never ended
    res = fit(cfg_for(tiny_world, tmp_path, "instruct", *base, "resume=auto"))
    client = MlflowClient(uri)
    assert res.run_id == killed.info.run_id and client.get_run(res.run_id).info.status == "FINISHED"
    assert client.get_run(orphan_id).info.status == "KILLED"
    assert client.get_run(other_id).info.status == "RUNNING"
    assert sorted(m.step for m in client.get_metric_history(res.run_id, "train/loss")) == list(range(4))
