"""The MLflow dashboard as a user sees it: headless Chromium loads the UI from a loopback server
(`mmln.tracking.serve_ui`) with a fresh profile. The link a finished tiny sweep prints (and `make ui`
prints, on its port) opens the experiment on the view `mmln.ui.comparison_link` stores in it: every
grid point a row with its strategy, lr and selection metric, best first, without a click. MLflow's
compare page (`python -m mmln.report --open`) lists the runs and their scores too."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from mmln.tracking import get_or_create_experiment, serve_ui, tracking_uri, ui_base, ui_links
from mmln.tracking.views import loopback

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def dom(url: str, profile, budget_ms: int = 20000) -> str:
    """The page's DOM after its scripts ran (a fresh profile, no network but loopback)."""
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
                           "--dump-dom", url], capture_output=True, text=True, timeout=180)
    return proc.stdout


def ui_port() -> int:
    """A port free now on the loopback the dashboard serves on."""
    with socket.socket(socket.AF_INET6 if ":" in loopback() else socket.AF_INET) as s:
        s.bind((loopback(), 0))
        return s.getsockname()[1]


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
    port = ui_port()
    proc = serve_ui(uri, port)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{ui_base(port)}/health", timeout=5)
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "MLflow server did not start"
                time.sleep(0.5)
        links = ui_links(ui_base(port), exp, ids)
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


LRS, STRATEGIES, METRIC = ["1e-3", "1e-4"], ["layernorm", "lora"], "eval/pope_random_accuracy"


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """The smallest real sweep: layernorm and LoRA x 2 lrs, 1 step each, POPE on 4 items, in a sqlite
    store; returns (store, the finished runs by id, the sweep's stdout)."""
    import contextlib
    import io

    from mmln import sweep
    from tests.conftest import TINY, make_world

    root = tmp_path_factory.mktemp("dash")
    w = make_world(root / "world", n_pretrain=4, n_instruct=8, n_mme_per_subtask=1, n_pope_images=2, n_vqa_images=1,
                   n_caption_images=5)[0]
    db, out = root / "mlflow.db", io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = sweep.main([
            "--config", str(TINY), "--strategies", *STRATEGIES, "--lrs", *LRS, "--bench", "pope", "--select-metric", METRIC,
            f"model.llm.tokenizer={w / 'tokenizer'}", f"output_dir={root / 'outputs'}", f"tracking.uri=sqlite:///{db}",
            "tracking.experiment=dash_sweep", "stage=instruct", "data.template=vicuna_v1", "data.num_workers=0",
            f"data.train.files=[{w / 'llava_instruct/llava_instruct_80k.json'}]", f"data.train.image_folder={w / 'coco/train2017'}",
            "train.global_batch_size=4", "train.micro_batch_size=4", "train.max_steps=1", "model.max_length=512",
            "analysis.grad_every_n_steps=0", "analysis.similarity=false", "eval.limit=4", "eval.yes_no=logits",
            f"eval.pope_files=[{w / 'pope/coco_pope_random.json'}]", f"eval.pope_images={w / 'coco/val2014'}"])
    assert rc == 0, out.getvalue()
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("dash_sweep").experiment_id
    runs = {r.info.run_id: r for r in client.search_runs([exp], "tags.strategy LIKE '%'")}
    assert len(runs) == 4
    return f"sqlite:///{db}", runs, out.getvalue()


def grid_cells(page: str) -> dict[str, dict[str, str]]:
    """{row id (MLflow: the run id): {column id: the cell's text}} of the runs table (ag-grid) in a DOM."""
    from html.parser import HTMLParser

    rows: dict[str, dict[str, str]] = {}

    class Cells(HTMLParser):
        row, cell, depth, text = None, None, 0, ""

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            self.row = a.get("row-id", self.row)
            if self.cell is not None:
                self.depth += tag not in ("img", "br", "input")
            elif a.get("role") == "gridcell" and self.row:
                self.cell, self.depth, self.text = a.get("col-id"), 1, ""

        def handle_endtag(self, tag):
            if self.cell is not None:
                self.depth -= 1
                if self.depth == 0:
                    rows.setdefault(self.row, {})[self.cell] = self.text.strip()
                    self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.text += data

    Cells().feed(page)
    return rows


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make install / .ci/run install it)")
def test_the_link_a_finished_sweep_prints_shows_strategies_x_lrs_sorted_by_its_metric(finished_sweep, tmp_path):
    """`make ui` (python -m mmln.ui): PORT honoured, a ready line whose link is the one the sweep printed
    (on this port), the server `mlflow server` + one uvicorn worker, stopped with ui by SIGTERM. A fresh headless Chromium opens the
    link onto the runs table: each run of the grid its own row (not folded under the sweep's parent),
    with its strategy, lr and selection metric in their columns, sorted by that metric, no click."""
    import os
    import re
    import signal
    import sys

    uri, runs, printed = finished_sweep
    printed_link = re.search(r"^dashboard \(serve it with `[^`]+`\): (http://\S+)$", printed, re.M).group(1)
    port = ui_port()
    ui = subprocess.Popen([sys.executable, "-m", "mmln.ui", "--tracking-uri", uri, "--port", str(port)],
                          stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in ui.stdout:
            lines.append(line)
            if line.startswith("mmln.ui: ready"):
                break
        link = lines[-1].split(": ", 2)[-1].split()[0]
        assert link == printed_link.replace(f"{ui_base(5000)}/", f"{ui_base(port)}/"), (link, printed_link)
        pgid = _pgid_of_server(ui.pid)
        group = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(p) == pgid]
        assert len(group) == 2, [open(f"/proc/{p}/cmdline").read() for p in group]
        page = dom(link, tmp_path / "profile")
    finally:
        ui.send_signal(signal.SIGTERM)  # as a closed terminal or a killed `make ui` would: the server goes too
        ui.wait(timeout=60)
    time.sleep(1)
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _pgid(p) == pgid], "mlflow server left running"
    cells = grid_cells(page)
    assert set(runs) <= set(cells), (sorted(cells), page[-3000:])  # every grid point is a row
    for run_id, run in runs.items():
        row = cells[run_id]
        assert row["tags.`strategy`"] == run.data.tags["strategy"] and row["tags.`lr`"] == run.data.tags["lr"], row
        assert float(row[f"metrics.`{METRIC}`"]) == pytest.approx(run.data.metrics[METRIC], rel=1e-3), row
    assert {cells[r]["tags.`strategy`"] for r in runs} == set(STRATEGIES)
    assert {float(cells[r]["tags.`lr`"]) for r in runs} == {float(x) for x in LRS}
    assert f"Sort: {METRIC}" in page  # the sort control names the selection metric (best first: orderByAsc false)
    if loopback() == "::1":  # served on [::1], MLflow's Assistant panel (it opens itself on 127.0.0.1) stays shut
        assert "data-assistant-ui" not in page


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
