"""`mmln.fit` on a native family (tiny Qwen2.5-VL; Gemma-3 in the slow suite) with `train.strategy=ddp`
on 2 gloo CPU processes trains to the same tensors as one process with the same global batch
(~25 s on 2 shared cores), and so does `fsdp2`, a blank image standing in on a rank whose
micro-batch has none; the chunked loss's gradients equal the
full-logits loss's; the bf16 rules hold (fp32 trainables, bf16 frozen weights and blocks)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmln.config import load_config
from tests.conftest import ROOT, free_port
from tests.test_families import family_dirs  # noqa: F401 (fixture)
from tests.test_families_fit import data_root  # noqa: F401 (fixture)

BASE = ["data.num_workers=0", "model.dtype=float32", "train.micro_batch_size=2", "train.global_batch_size=4",
        "train.max_steps=3", "train.epochs=-1", "train.lr=1e-2", "train.warmup_ratio=0", "train.accelerator=cpu",
        "analysis.grad_every_n_steps=0", "analysis.similarity=false", "quiet=true", "tracking.experiment=famdist",
        "stage=instruct", "train.seed=0"]


def overrides(ckpt, root, out, *extra) -> list[str]:
    return [f"model.init_from={ckpt}", f"data.train.files=[{root / 'data.json'}]",
            f"data.train.image_folder={root / 'img'}", f"output_dir={out}", *BASE, *extra]


def two_ranks(ckpt, root, out, tmp_path, *extra):
    (tmp_path / "empty.yaml").write_text("{}\n")
    env = {**os.environ, "MMLN_QUIET": "1", "MASTER_PORT": free_port()}
    return subprocess.run([sys.executable, "-m", "mmln.fit", "--config", str(tmp_path / "empty.yaml"),
                           *overrides(ckpt, root, out, "train.devices=2", *extra)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def trained(out, name):
    return load_file(str(next((out).glob(f"*/{name}/trainable.safetensors"))))


def two_ranks_like_one(family, root, tmp_path, strategy) -> None:
    """`family`'s tiny checkpoint trained on `root`'s data by one process and by 2 gloo ranks under
    `strategy`, same global batch: the same trained tensors (allclose: another summation order)."""
    from mmln.fit import fit
    from mmln.model.families.tiny import write_tiny

    ckpt = write_tiny(family, tmp_path / "base")
    one = fit(load_config(None, overrides(ckpt, root, tmp_path / "out", "run_name=one")))
    proc = two_ranks(ckpt, root, tmp_path / "out", tmp_path, "run_name=two", f"train.strategy={strategy}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    a = load_file(str(one.run_dir / "trainable.safetensors"))
    b = trained(tmp_path / "out", "two")
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), (k, (a[k] - b[k]).abs().max())


@pytest.mark.parametrize("family", ["qwen2_5_vl", pytest.param("gemma3", marks=pytest.mark.slow)])
def test_ddp_two_processes_train_a_family_like_one(family, data_root, tmp_path):  # noqa: F811
    two_ranks_like_one(family, data_root, tmp_path, "ddp")


def text_heavy(tmp_path):
    """2 image records among 8: over 3 steps of 2 ranks x 2 samples, some rank's micro-batch has no image
    while the other's has one (the step on which FSDP2 hung or crashed before the blank image)."""
    from PIL import Image

    from tests.test_families_fit import records

    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    for i, (h, w) in enumerate([(40, 28), (32, 32)]):
        Image.fromarray((np.random.RandomState(i).rand(h, w, 3) * 255).astype("uint8")).save(root / "img" / f"{i}.png")
    texts = [{"id": f"t{i}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
             for i, (q, a) in enumerate([("Describe the picture.", "A cat."), ("Is it red?", "Yes"),
                                         ("Count to three.", "1 2 3"), ("Name a colour.", "Blue"),
                                         ("Say hello.", "Hello"), ("Is it a dog?", "No")])]
    (root / "data.json").write_text(json.dumps(records(2)[:2] + texts))
    return root


# SmolVLM (idefics3) and LLaVA-OneVision also train under fsdp2, and end 7.0e-5 / 3.6e-5 from one process on
# their projector weights (scale 0.09 / 0.07): ddp ends 5.3e-5 off for SmolVLM too, so it is 2-rank summation order that
# AdamW amplifies on near-zero gradients, beyond this test's 1e-5 (docs/families.md)
@pytest.mark.parametrize("family", ["qwen2_5_vl", *(pytest.param(f, marks=pytest.mark.slow)
                                                   for f in ("gemma3", "qwen2_vl"))])
def test_fsdp2_two_processes_train_a_family_like_one(family, tmp_path):
    """FSDP2 on a native family: a rank whose micro-batch has no image runs the vision unit on a blank
    image (times 0) so that its collectives match the ranks with images; the tensors equal one process."""
    two_ranks_like_one(family, text_heavy(tmp_path), tmp_path, "fsdp2")


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "idefics3", "llava_onevision", "gemma3"])
def test_a_blank_image_joins_the_vision_unit_and_changes_neither_loss_nor_gradients(family_dirs, family):
    """What fsdp2 adds to a batch without images: the vision tower's norms (tune.vision_norms) get a
    gradient (0: the unit took part in backward), every other gradient and the loss are unchanged."""
    from mmln.run.build import build_model
    from tests.test_families import datamodule, family_cfg

    root, dirs = family_dirs
    cfg = family_cfg(root, dirs[family], "model.dtype=float32", "tune.strategy=layernorm", "tune.vision_norms=true",
                     "train.strategy=fsdp2")
    dm = datamodule(cfg)
    batch = dm.collate([dm.train_set[1], dm.train_set[1]])  # the text-only record twice
    assert batch["pixel_values"] is None or "pixel_values" not in batch["pixel_values"]
    assert "pixel_values" in batch["blank_image"]
    assert "blank_image" not in dm.collate([dm.train_set[0], dm.train_set[1]])  # a batch with an image: none
    mllm = build_model(cfg)
    vision = {n for n, p in mllm.named_parameters() if any(p is q for q in mllm.vision.parameters()) and p.requires_grad}

    def grads(b, blank=None):
        mllm.zero_grad(set_to_none=True)
        out = mllm(b["input_ids"], b["attention_mask"], b["labels"], b["pixel_values"], blank_image=blank)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad for n, p in mllm.named_parameters() if p.requires_grad}

    _, real = grads(dm.collate([dm.train_set[0], dm.train_set[1]]))  # a real image: which tower tensors get a grad
    l0, g0 = grads(batch)
    l1, g1 = grads(batch, batch["blank_image"])
    assert torch.equal(l0, l1)
    reached = {n for n in vision if real[n] is not None}
    assert reached and {n for n in vision if g1[n] is not None} == reached  # the same collectives as a real image
    assert all(g0[n] is None and not g1[n].any() for n in reached)
    for n, g in g0.items():
        assert g is None or torch.equal(g, g1[n]), n


@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3"])
def test_chunked_loss_gradients_equal_the_full_logits_loss_on_a_family(family_dirs, family):
    from mmln.run.build import build_model
    from tests.test_families import datamodule, family_cfg

    root, dirs = family_dirs
    cfg = family_cfg(root, dirs[family], "model.dtype=float32", "tune.strategy=layernorm")
    dm = datamodule(cfg)
    batch = dm.collate([dm.train_set[0], dm.train_set[1]])  # an image record and a text-only one
    mllm = build_model(cfg)
    grads = []
    for chunk in (0, 5):  # 5 divides no row length here: a ragged last chunk
        mllm.loss_chunk = chunk
        mllm.zero_grad()
        out = mllm(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["pixel_values"])
        assert (out.logits is None) == (chunk > 0)
        out.loss.backward()
        grads.append((out.loss.detach(), {n: p.grad.clone() for n, p in mllm.named_parameters() if p.requires_grad}))
    (full, g0), (chunked, g1) = grads
    assert g0 and g0.keys() == g1.keys()
    assert torch.allclose(full, chunked, atol=1e-6, rtol=1e-5)
    for k in g0:
        # fp32 sums in another order: equal to ~1e-6 of the gradient's scale (a wrong chunk is off by O(1))
        assert (g0[k] - g1[k]).abs().max() <= 1e-5 * g0[k].abs().max() + 1e-7, (k, (g0[k] - g1[k]).abs().max())


@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3"])
def test_bf16_mixed_keeps_a_family_s_blocks_in_bf16_while_trainables_stay_fp32(family_dirs, family):
    """The GPU precision setting (docs/training.md) on CPU: bf16 frozen weights, fp32 trainables
    (norms, projector, embeddings, head), every decoder block's input and output bf16 under autocast."""
    from mmln.run.build import build_model
    from tests.test_families import datamodule, family_cfg

    root, dirs = family_dirs
    cfg = family_cfg(root, dirs[family], "model.dtype=bfloat16", "tune.strategy=layernorm")
    dm = datamodule(cfg)
    batch = dm.collate([dm.train_set[0], dm.train_set[1]])
    mllm = build_model(cfg).train()
    trainable = [p for p in mllm.parameters() if p.requires_grad]
    frozen = [p for p in mllm.parameters() if not p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    seen = []
    hooks = [layer.register_forward_hook(lambda mod, i, kw, o: seen.append(
        ((i[0] if i else kw["hidden_states"]).dtype, (o[0] if isinstance(o, tuple) else o).dtype)), with_kwargs=True)
        for layer in mllm.decoder_layers()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mllm(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["pixel_values"])
    out.loss.backward()
    for h in hooks:
        h.remove()
    assert len(seen) == len(mllm.decoder_layers()) and all(a == b == torch.bfloat16 for a, b in seen), seen
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable if p.grad is not None)
    assert sum(p.grad is not None for p in trainable) > len(trainable) // 2
