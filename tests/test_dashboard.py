"""The MLflow dashboard as a user sees it: headless Chromium loads the UI from a loopback server
(`mmln.tracking.serve_ui`) and finds the runs' names and `eval/mme_perception` on the page that
puts strategies x learning rates side by side (`mmln.tracking.ui_links`, printed by
`python -m mmln.report --open`)."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from mmln.tracking import get_or_create_experiment, serve_ui, tracking_uri, ui_links

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def dom(url: str, profile, budget_ms: int = 20000) -> str:
    """The page's DOM after its scripts ran (a fresh profile, no network but loopback)."""
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
                           "--dump-dom", url], capture_output=True, text=True, timeout=180)
    return proc.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make install / .ci/run install it)")
def test_headless_chromium_finds_the_runs_and_their_mme_score(tmp_path):
    uri = tracking_uri()
    c = MlflowClient(uri)
    exp = get_or_create_experiment(c, "dash_ln", uri)
    ids = []
    for name, mme in (("layernorm-lr0.003", 1234.5), ("finetune-lr2e-05", 987.25)):
        run = c.create_run(exp, run_name=name, tags={"stage": "instruct"}).info.run_id
        c.log_batch(run, metrics=[Metric("eval/mme_perception", mme, 0, 0)])
        c.set_terminated(run, "FINISHED")
        ids.append(run)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = serve_ui(uri, port)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "MLflow server did not start"
                time.sleep(0.5)
        links = ui_links(f"http://127.0.0.1:{port}", exp, ids)
        page = dom(links["compare"], tmp_path / "profile")
        assert "layernorm-lr0.003" in page and "finetune-lr2e-05" in page, page[-2000:]
        assert "eval/mme_perception" in page
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_make_ui_says_make_demo_on_an_empty_store_and_creates_nothing(tmp_path):
    import sys

    db = tmp_path / "mlflow.db"
    proc = subprocess.run([sys.executable, "-m", "mmln.ui", "--tracking-uri", f"sqlite:///{db}", "--port", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "run `make demo`" in proc.stderr, proc.stderr
    assert not db.exists()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make install / .ci/run install it)")
def test_make_ui_prints_when_ready_a_link_to_the_newest_experiment_and_starts_two_processes(tmp_path):
    """`python -m mmln.ui` (make ui): PORT honoured, a ready line with the experiment's link, which
    headless Chromium opens onto the runs; the server is `mlflow server` + one uvicorn worker, no job runner."""
    import os
    import signal
    import sys

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = MlflowClient(uri)
    get_or_create_experiment(c, "older", uri)
    exp = get_or_create_experiment(c, "ui_ln", uri)
    for name in ("layernorm-lr0.003", "finetune-lr2e-05"):
        run = c.create_run(exp, run_name=name).info.run_id
        c.log_batch(run, metrics=[Metric("eval/mme_perception", 900.5, 0, 0)])
        c.set_terminated(run, "FINISHED")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen([sys.executable, "-m", "mmln.ui", "--tracking-uri", uri, "--port", str(port)],
                          stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in ui.stdout:
            lines.append(line)
            if line.startswith("mmln.ui: ready"):
                break
        link = lines[-1].split(": ", 2)[-1].split()[0]
        assert link == f"http://127.0.0.1:{port}/#/experiments/{exp}/runs?workflowType=machine_learning", lines
        group = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(p) == _pgid_of_server(ui.pid)]
        assert len(group) == 2, [open(f"/proc/{p}/cmdline").read() for p in group]
        page = dom(link, tmp_path / "profile")
        assert "layernorm-lr0.003" in page and "finetune-lr2e-05" in page, page[-2000:]  # the training layout's rows
    finally:
        ui.send_signal(signal.SIGINT)
        ui.wait(timeout=60)


def _pgid(pid: str) -> int:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return -1


def _pgid_of_server(ui_pid: int) -> int:
    """The process group of the `mlflow server` the ui process started (its child)."""
    import os

    kids = [p for p in os.listdir("/proc") if p.isdigit() and _ppid(p) == ui_pid]
    return _pgid(kids[0]) if kids else -2


def _ppid(pid: str) -> int:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1
