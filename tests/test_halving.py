"""Successive halving (mmln.halving): paused runs continue exactly, Optuna's decisions from known
proxy values, a tiny halving sweep end to end (kill -9 mid-rung, resume, the promoted run equals the
full-grid run of the same point bit for bit)."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from mmln.fit import fit
from tests.test_fit import cfg_for, tiny_world  # noqa: F401  (session fixture)


def test_a_paused_run_continues_bit_exact(tiny_world, tmp_path):  # noqa: F811
    base = ["tune.strategy=layernorm", "train.lr=1e-3", "train.save_every_n_steps=5", "train.warmup_ratio=0.2",
            "train.global_batch_size=8", "train.micro_batch_size=4"]  # 96 records / 8 -> 12 steps, accumulation 2
    ref = fit(cfg_for(tiny_world, tmp_path, "instruct", *base, "run_name=straight"))
    cfg = cfg_for(tiny_world, tmp_path, "instruct", *base, "run_name=paused")
    first = fit(cfg, stop_at=lambda total: total // 9)
    assert (first.total_steps, first.paused_at) == (12, 1) and not (first.run_dir / "trainable.safetensors").exists()
    ckpt = torch.load(first.run_dir / "checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 1 and ckpt["lr_schedulers"][0]["last_epoch"] == 1
    second = fit(cfg, stop_at=lambda total: 3 * (total // 9))
    assert second.paused_at == 3 and second.run_id == first.run_id
    last = fit(cfg)
    assert last.paused_at is None and last.run_id == first.run_id
    a, b = load_file(str(ref.run_dir / "trainable.safetensors")), load_file(str(last.run_dir / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
