"""`mmln.fit` on a native family (tiny Qwen2.5-VL; Gemma-3 in the slow suite) with `train.strategy=ddp`
on 2 gloo CPU processes trains to the same tensors as one process with the same global batch
(~25 s on 2 shared cores); `fsdp2` is refused in one line; the chunked loss's gradients equal the
full-logits loss's; the bf16 rules hold (fp32 trainables, bf16 frozen weights and blocks)."""
from __future__ import annotations

import os
import subprocess
import sys

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


@pytest.mark.parametrize("family", ["qwen2_5_vl", pytest.param("gemma3", marks=pytest.mark.slow)])
def test_ddp_two_processes_train_a_family_like_one(family, data_root, tmp_path):  # noqa: F811
    from mmln.fit import fit
    from mmln.model.families.tiny import write_tiny

    ckpt = write_tiny(family, tmp_path / "base")
    one = fit(load_config(None, overrides(ckpt, data_root, tmp_path / "out", "run_name=one")))
    proc = two_ranks(ckpt, data_root, tmp_path / "out", tmp_path, "run_name=two", "train.strategy=ddp")
    assert proc.returncode == 0, proc.stderr[-4000:]
    a = load_file(str(one.run_dir / "trainable.safetensors"))
    b = trained(tmp_path / "out", "two")
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), (k, (a[k] - b[k]).abs().max())


def test_fsdp2_is_refused_on_a_family_in_one_line(data_root, tmp_path):  # noqa: F811
    from mmln.model.families.tiny import write_tiny

    ckpt = write_tiny("qwen2_5_vl", tmp_path / "base")
    (tmp_path / "empty.yaml").write_text("{}\n")
    proc = subprocess.run([sys.executable, "-m", "mmln.fit", "--config", str(tmp_path / "empty.yaml"),
                           *overrides(ckpt, data_root, tmp_path / "out", "train.strategy=fsdp2", "train.devices=2")],
                          cwd=ROOT, env={**os.environ, "MMLN_QUIET": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if "fsdp2" in x]
    assert len(lines) == 1 and "qwen2_5_vl" in lines[0] and "Traceback" not in proc.stderr, proc.stderr[-3000:]


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
