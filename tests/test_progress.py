"""Progress on long work: tqdm bars (count, rate, ETA) for synthesis, data check and evaluation, the
sweep's `point k/n` with an ETA, and the quiet demo's heartbeat. Bars go to stderr and are silent
under MMLN_QUIET=1. (Training's bar, whose total respects train.max_steps, is tested in test_fit.)"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT


def run(*args: str, quiet: str = "0") -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "MMLN_QUIET": quiet, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def final_counts(stderr: str, desc: str) -> set[tuple[int, int]]:
    """The (done, total) pairs a tqdm bar named `desc` printed."""
    return {(int(a), int(b)) for a, b in re.findall(rf"{re.escape(desc)}: *\d+%\|[^|]*\| *(\d+)/(\d+) \[", stderr)}


@pytest.mark.parametrize(("done", "total", "elapsed", "expected"), [
    (1, 3, 10.0, "0m 20s"), (2, 4, 125.0, "2m 5s"), (1, 2, 4000.0, "1h 6m"), (0, 5, 3.0, "-"), (5, 5, 3.0, "-")])
def test_eta_is_the_mean_time_per_item_times_the_items_left(done, total, elapsed, expected):
    from mmln.base.progress import eta

    assert eta(done, total, elapsed) == expected


def test_bar_counts_with_a_rate_and_is_silent_when_quiet(capsys, monkeypatch):
    from mmln.base.progress import bar

    monkeypatch.setenv("MMLN_QUIET", "0")
    assert list(bar(range(7), desc="work", unit="img")) == list(range(7))
    err = capsys.readouterr().err
    assert final_counts(err, "work") >= {(7, 7)} and "img/s" in err and "<" in err  # rate and time left
    monkeypatch.setenv("MMLN_QUIET", "1")
    assert list(bar(range(7), desc="work")) == list(range(7))
    assert capsys.readouterr().err == ""


def test_a_quiet_run_earlier_in_the_process_leaves_mmln_bars_to_mmln_quiet(capsys, monkeypatch):
    """quiet_third_party disables tqdm.auto's class for third parties; mmln's own bar must still follow
    MMLN_QUIET afterwards (a quiet in-process fit, then a loud evaluation, in one Python session)."""
    import tqdm.auto

    from mmln.base.progress import bar, quiet_third_party

    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm.auto.tqdm)  # restored after the test
    monkeypatch.setenv("MMLN_QUIET", "1")
    quiet_third_party()
    monkeypatch.setenv("MMLN_QUIET", "0")
    assert list(bar(range(7), desc="work", unit="img")) == list(range(7))
    assert final_counts(capsys.readouterr().err, "work") >= {(7, 7)}


def test_synth_counts_every_image_it_writes_and_check_counts_batches(tmp_path, tiny_world):
    out = tmp_path / "syn"
    sizes = ["--n-pretrain", "5", "--n-instruct", "4", "--n-mme-per-subtask", "1", "--n-pope-images", "2",
             "--n-vqa-images", "2", "--n-caption-images", "3", "--image-size", "32"]
    proc = run("-m", "mmln.data", "synth", "--out", str(out), *sizes)
    assert proc.returncode == 0, proc.stderr[-2000:]
    images = sum(1 for p in out.rglob("*") if p.suffix in (".jpg", ".png"))
    assert final_counts(proc.stderr, "synth syn") >= {(images, images)}, (images, proc.stderr[-1500:])
    quiet = run("-m", "mmln.data", "synth", "--out", str(tmp_path / "q"), *sizes, quiet="1")
    assert "synth q" not in quiet.stderr

    check = run("-m", "mmln.data", "check", "--config", "conf/model/tiny.yaml",
                f"data.train.files=[{out / 'llava_instruct/llava_instruct_80k.json'}]",
                f"data.train.image_folder={out / 'coco/train2017'}", f"model.llm.tokenizer={tiny_world[2]}", "data.num_workers=0")
    assert "train: 4 records" in check.stdout, check.stdout[-1500:]
    assert (1, 1) in final_counts(check.stderr, "check train"), check.stderr[-1500:]  # 4 records: 1 batch of 32


def test_heartbeat_prints_while_the_block_runs_and_stops_after(capsys):
    from mmln.demo.stages import heartbeat

    with heartbeat("stage 2", every=0.05):
        time.sleep(0.32)
    beats = [line for line in capsys.readouterr().out.splitlines() if "stage 2: still running" in line]
    assert 1 <= len(beats) <= 7, beats  # about 6; fewer on a loaded machine
    time.sleep(0.2)
    assert "still running" not in capsys.readouterr().out  # the thread ended with the block


def test_heartbeat_names_the_training_step_and_an_eta_during_a_real_lightning_fit(capsys):
    """StepCounter (added by mmln.fit to every run) publishes step k/n; the demo's heartbeat prints it."""
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from mmln.base import progress
    from mmln.callbacks.progress import StepCounter
    from mmln.demo.stages import heartbeat

    seen = []

    class Slow(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            seen.append(progress.steps_line())
            time.sleep(0.03)

    trainer = L.Trainer(max_steps=12, callbacks=[StepCounter(12), Slow()], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    with heartbeat("stage 2", every=0.05):
        trainer.fit(BoringModel())
    assert seen[0].startswith("step 1/12, ETA ") and seen[-1] == "step 12/12, ETA -", seen
    beats = [line for line in capsys.readouterr().out.splitlines() if "stage 2: step " in line]
    assert beats and all("/12, ETA" in b for b in beats), beats
    assert progress.steps_line() == ""  # cleared when training ended


def test_a_demo_pretraining_loop_says_step_k_of_n_and_eta_when_steps_are_slow(monkeypatch, capsys):
    import torch

    from mmln.demo import pretrain as demo_pretrain

    monkeypatch.setattr(demo_pretrain, "HEARTBEAT_S", 0.05)
    w = torch.nn.Parameter(torch.ones(3))

    def loss_at():
        time.sleep(0.03)
        return (w ** 2).sum()

    demo_pretrain.train_loop([w], loss_at, steps=10, lr=1e-3, label="vision encoder", log_every=500)
    lines = [line for line in capsys.readouterr().out.splitlines() if "vision encoder: step" in line]
    # step 1 and step 10 by log_every, and at least one more in between by time
    assert len(lines) >= 3 and any("ETA" in line and "step 1/" not in line and "10/10" not in line for line in lines), lines
