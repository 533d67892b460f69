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
