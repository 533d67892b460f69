"""data.batching=packed: a micro-batch's samples share rows (per-sample position ids, attention that
never crosses samples, each sample's first label ignored). Loss and every trainable gradient equal
the unpacked ones (fp32, relative 1e-5) for a norm strategy and for LoRA, in one row and in several."""
from __future__ import annotations

import pytest
import torch

from mmln.config import ConfigError
from mmln.base.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mmln.model import build_mllm
from mmln.tuning import apply_strategy
from tests.conftest import tiny_config

TEXT = [60, 130, 25, 90]  # + 15 positions each once the image placeholder becomes 16: 75, 145, 40, 105


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, T = len(TEXT), max(TEXT)
    ids = torch.randint(3, 512, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(TEXT):
        mask[b, :n] = 1
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    for b, n in enumerate(TEXT):
        labels[b, : n // 3] = IGNORE_INDEX  # the prompt
    ids = ids.masked_fill(mask == 0, 0)
    ids[:, 2] = IMAGE_TOKEN_INDEX
    return ids, mask, labels, torch.randn(B, 3, 64, 64, generator=g)


@pytest.mark.parametrize("max_length,rows", [(512, 1), (160, 3)])
@pytest.mark.parametrize("strategy", ["layernorm", "lora"])
def test_packed_loss_and_every_gradient_equal_unpacked(strategy, max_length, rows):
    cfg = tiny_config(f"tune.strategy={strategy}", f"model.max_length={max_length}", "model.loss_chunk=64")
    torch.manual_seed(0)
    m = build_mllm(cfg.model)
    apply_strategy(m, cfg.tune)
    m.eval()  # no dropout (LoRA's): both passes must see the same function; gradients flow as in training
    ids, mask, labels, px = batch()

    s = m.embed_batch(ids, mask, labels, px)
    embeds, attn, pos, packed_labels = m.pack(s)
    assert embeds.shape[0] == rows and attn.shape == (rows, 1, embeds.shape[1], embeds.shape[1])
    assert int((pos == 0).sum()) >= len(TEXT)  # position ids restart for every sample (padding is 0 too)
    assert int((packed_labels != IGNORE_INDEX).sum()) == int((s.labels[:, 1:] != IGNORE_INDEX).sum())

    def step(pack: bool):
        m.pack_samples = pack
        m.zero_grad(set_to_none=True)
        loss = m(ids, mask, labels, px).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}

    (l0, g0), (l1, g1) = step(False), step(True)
    assert torch.allclose(l1, l0, rtol=1e-5, atol=0), (l0, l1)
    assert g0.keys() == g1.keys() and g0
    for n in g0:
        rel = (g1[n] - g0[n]).norm() / g0[n].norm().clamp(min=1e-30)
        assert rel <= 1e-5, (n, float(rel))


def test_packed_needs_the_chunked_loss_and_sdpa():
    with pytest.raises(ConfigError, match="data.batching=packed needs model.loss_chunk > 0"):
        tiny_config("data.batching=packed", "model.loss_chunk=0")
    with pytest.raises(ConfigError, match="data.batching"):
        tiny_config("data.batching=pakced")


def test_a_packed_run_trains(tiny_world, tmp_path):
    from mmln.run.build import build_model
    from mmln.fit import fit
    from tests.test_fit import cfg_for

    cfg = cfg_for(tiny_world, tmp_path, "instruct", "data.batching=packed", "train.max_steps=2", "run_name=packed")
    assert build_model(cfg).pack_samples
    result = fit(cfg)
    assert (result.run_dir / "trainable.safetensors").is_file()
    assert all(v == v for k, v in result.metrics.items() if isinstance(v, float))
