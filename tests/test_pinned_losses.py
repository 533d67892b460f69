"""The first training losses of each stage, pinned (as torchtune's recipe tests pin theirs).

Tiny config, fp32 on CPU, seeded, the session's synthetic world: any change of the model, the
label mask, the loss normalisation, the initialisation or the data order changes these numbers
and fails here loudly. When a change is meant to move them, rerun with `-s` to print the new
values and update EXPECTED in the same commit, saying why. The values are the same with 1 and 2
CPU threads. Each case is one real `fit` of 4 steps (~15 s on 2 shared cores; the first fit of a
session also pays the Lightning / MLflow imports and the sqlite store's creation).
"""
from __future__ import annotations

import pytest
import torch

from mmln.fit import fit
from tests.test_fit import cfg_for, losses

STEPS = 4
# length-grouped batching (the default since issue 17) draws other micro-batches than random
# batching; with data.batching=random the values from before it (chunked loss, host-planned
# splice, device-built SDPA mask included) are reproduced exactly: the "instruct_random" case
EXPECTED = {
    "pretrain": [6.266933917999268, 6.275822162628174, 6.273499965667725, 6.2813334465026855],
    "instruct": [6.232495307922363, 6.231546878814697, 6.163157939910889, 6.128208637237549],
    "instruct_random": [6.2577128410339355, 6.211614608764648, 6.146322250366211, 6.0655293464660645],
}
EXTRA = {
    "pretrain": ("train.precision=32-true",),
    "instruct": ("train.precision=32-true", "tune.strategy=layernorm", "train.lr=1e-3"),
    "instruct_random": ("train.precision=32-true", "tune.strategy=layernorm", "train.lr=1e-3", "data.batching=random"),
}


@pytest.mark.parametrize("stage", ["pretrain", "instruct", "instruct_random"])
def test_first_losses_are_pinned(stage, tiny_world, tmp_path):
    run = fit(cfg_for(tiny_world, tmp_path, stage.split("_")[0], f"train.max_steps={STEPS}", *EXTRA[stage]))
    got = losses(run.run_id)
    print(stage, got)
    assert len(got) == STEPS
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64),
                               torch.tensor(EXPECTED[stage], dtype=torch.float64), rtol=1e-5, atol=1e-6)
