"""A known defect, found by benchmarks/bench_halving_interior.py (issue 27): a run paused by
successive halving at several rung ends, one of them the end of an epoch, does NOT continue bit-exact
to the end (the straight run's weights differ). In that benchmark (144 records / batch 8 = 18 steps
an epoch, 4 epochs = 72 steps, rungs end at 6, 18, 54) the survivors' last rung resumed at step 54
(the end of epoch 3) trained on to step 90, one epoch too many (MLflow's final metrics at step 90,
`val/loss` logged up to step 88 where the grid's run stops at 71), and ended with other weights
(max |dw| 0.008) and another held-out loss (1.1048 against the grid's 1.1121). A single pause at an
epoch end of a 2-epoch run (12 of 24 steps) does continue bit-exact (checked by hand), so it takes
the sequence below. Strict xfail: it starts failing (XPASS) once fixed; then drop the marker."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mmln.fit import fit
from tests.test_fit import cfg_for


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="resume after pauses at 3, 12 (an epoch end) and 24 is not bit-exact (issue 27)")
def test_a_run_paused_at_rungs_and_an_epoch_end_continues_bit_exact(tiny_world, tmp_path):
    base = ["tune.strategy=layernorm", "train.lr=1e-3", "train.save_every_n_steps=1000", "train.warmup_ratio=0.1",
            "train.global_batch_size=8", "train.micro_batch_size=8", "train.epochs=3"]  # 96 / 8 = 12 steps an epoch, 36
    ref = fit(cfg_for(tiny_world, tmp_path, "instruct", *base, "run_name=straight"))
    cfg = cfg_for(tiny_world, tmp_path, "instruct", *base, "run_name=paused")
    for pause in (3, 12, 24):  # as halving's rungs would (12 and 24: the ends of epochs 1 and 2)
        assert fit(cfg, stop_at=lambda total, p=pause: p).paused_at == pause
    last = fit(cfg)
    a, b = load_file(str(ref.run_dir / "trainable.safetensors")), load_file(str(last.run_dir / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
