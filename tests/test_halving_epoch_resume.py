"""A run paused by successive halving at rung ends, one of them the end of an epoch, continues
bit-exact (issue 27's defect, found by benchmarks/bench_halving_interior.py: there a survivor paused
at 6, 18 (an epoch end) and 54 of 72 steps trained on to step 90, one epoch too many, and ended with
other weights than the grid's run).

The cause is Lightning's (2.6) restore of a checkpoint saved after an epoch's last batch: it counts
that epoch as done but treats the run as restarted mid-epoch, so the next epoch starts uncounted,
and a checkpoint saved inside it says no epoch is running; resumed from that one, the run repeats an
epoch. `mmln.lit.trainer.epoch_end_resume` starts the next epoch as a fresh one and repairs
checkpoints written before it."""
from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from mmln.fit import fit
from tests.test_fit import cfg_for

# 96 records / 8 = 12 steps an epoch, 3 epochs = 36 steps
BASE = ["tune.strategy=layernorm", "train.lr=1e-3", "train.save_every_n_steps=1000", "train.warmup_ratio=0.1",
        "train.global_batch_size=8", "train.micro_batch_size=8", "train.epochs=3"]


def saved_step(run_dir) -> int:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]


def loss_steps(run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, "train/loss"))


def test_a_run_resumed_at_an_epoch_end_and_paused_again_trains_no_extra_epoch(tiny_world, tmp_path):
    """32 records: 4 steps an epoch, 12 in all. Pause at 4 (the end of epoch 1), resume and pause at
    8, resume to the end: 12 steps, each logged once (on the old code: 16 steps, the loss of steps
    8-11 logged twice). A checkpoint at 8 as the old code wrote it (its epoch progress one epoch
    short) is repaired on resume."""
    small = [*BASE, "data.train.limit=32"]
    cfg = cfg_for(tiny_world, tmp_path, "instruct", *small, "run_name=paused")
    for pause in (4, 8):
        paused = fit(cfg, stop_at=lambda total, p=pause: p)
        assert paused.paused_at == pause
    old = torch.load(paused.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    last = fit(cfg)
    assert saved_step(last.run_dir) == last.total_steps == 12
    steps = loss_steps(last.run_id)
    assert steps == sorted(set(steps)) and len(steps) == 12

    epochs = old["loops"]["fit_loop"]["epoch_progress"]
    assert epochs["total"]["ready"] == 2 and epochs["total"]["processed"] == 1  # epoch 2 running, 1 done
    for counts in (epochs["total"], epochs["current"]):  # what Lightning wrote without epoch_end_resume
        counts["ready"] -= 1
        counts["started"] -= 1
    ckpt = tmp_path / "old" / "last.ckpt"  # beside the run (no config.yaml next to it: a foreign checkpoint)
    ckpt.parent.mkdir()
    torch.save(old, ckpt)
    repaired = fit(cfg_for(tiny_world, tmp_path, "instruct", *small, "run_name=repaired", f"resume={ckpt}"))
    assert saved_step(repaired.run_dir) == 12
    a, b = (load_file(str(r.run_dir / "trainable.safetensors")) for r in (last, repaired))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

@pytest.mark.slow
def test_a_run_paused_at_rungs_and_an_epoch_end_continues_bit_exact(tiny_world, tmp_path):
    ref = fit(cfg_for(tiny_world, tmp_path, "instruct", *BASE, "run_name=straight"))
    cfg = cfg_for(tiny_world, tmp_path, "instruct", *BASE, "run_name=paused")
    for pause in (3, 12, 24):  # as halving's rungs would (12 and 24: the ends of epochs 1 and 2)
        assert fit(cfg, stop_at=lambda total, p=pause: p).paused_at == pause
    last = fit(cfg)
    a, b = load_file(str(ref.run_dir / "trainable.safetensors")), load_file(str(last.run_dir / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
