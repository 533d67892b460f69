"""`mmln.fit` stage 2 on a tiny random checkpoint of each family, then `mmln.export --format hf`:
the export loads with AutoModelForImageTextToText / AutoProcessor, its logits equal mmln's
(max |diff| <= 1e-5, fp32), and after a few `layernorm` steps exactly the norms of the language
model + the trio (projector, input embeddings, LM head) moved, nothing else."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mmln.config import load_config

ANSWERS = ["A red cat sits on a mat.", "No", "A blue square and a green circle.", "Yes"]


def records(n_images: int = 6) -> list[dict]:
    out = []
    for i in range(n_images):
        out.append({"id": f"img{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the image?"}, {"from": "gpt", "value": ANSWERS[i % 4]},
            {"from": "human", "value": "Is there a dog?"}, {"from": "gpt", "value": ANSWERS[(i + 1) % 4]}]})
    out.append({"id": "text", "conversations": [{"from": "human", "value": "Describe the picture."},
                                                {"from": "gpt", "value": ANSWERS[2]}]})
    out.append({"id": "text2", "conversations": [{"from": "human", "value": "Is it red?"},
                                                 {"from": "gpt", "value": ANSWERS[3]}]})
    return out


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fdata")
    (root / "img").mkdir()
    rng = np.random.RandomState(0)
    for i, (h, w) in enumerate([(40, 28), (32, 32), (24, 48), (36, 36), (28, 40), (32, 20)]):
        Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8")).save(root / "img" / f"{i}.png")
    (root / "data.json").write_text(json.dumps(records()))
    return root


def fit_family(family, root, tmp_path, *extra):
    from mmln.fit import fit
    from mmln.model.families.tiny import write_tiny

    ckpt = write_tiny(family, tmp_path / "base")
    cfg = load_config(None, [f"model.init_from={ckpt}", f"data.train.files=[{root / 'data.json'}]",
                             f"data.train.image_folder={root / 'img'}", "data.num_workers=0", "model.dtype=float32",
                             "train.micro_batch_size=2", "train.global_batch_size=4", "train.max_steps=3",
                             "train.epochs=-1", "train.lr=1e-2", "train.warmup_ratio=0", "train.log_every_n_steps=1",
                             f"output_dir={tmp_path / 'out'}", "analysis.grad_every_n_steps=1",
                             "analysis.grad_norms=[all]", "analysis.similarity=true", "analysis.similarity_samples=4",
                             "quiet=true", "tracking.experiment=families",
                             "stage=instruct", *extra])
    return cfg, ckpt, fit(cfg)


def expected_moved(family, keys: set[str]) -> set[str]:
    """By name (mmln selects by module type): the language model's norms, the projector, the
    input embeddings and the LM head of the family's transformers checkpoint."""
    from mmln.families import get_family

    fam = get_family(family)
    lm = fam.language_model + "."
    norm = {k for k in keys if k.startswith(lm) and k.rsplit(".", 2)[-2].endswith("norm")}
    trio = {k for k in keys if any(k.startswith(c) for c in fam.connector)
            or k in (lm + "embed_tokens.weight", fam.head + ".weight")}
    return norm | trio


@pytest.mark.parametrize("family", ["qwen2_5_vl", "idefics3", "llava_onevision", "gemma3"])
def test_fit_layernorm_then_export_hf_round_trip(family, data_root, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmln.run.build import build_model
    from mmln.export import export

    cfg, base_dir, run = fit_family(family, data_root, tmp_path)
    trained = run.run_dir / "trainable.safetensors"
    assert trained.is_file() and run.metrics["params/trainable_norms"] > 0
    # the paper's analyses ran on the language model's blocks: LayerNorm gradients and layer similarity
    from mlflow import MlflowClient

    logged = set(MlflowClient().get_run(run.run_id).data.metrics)
    assert "analysis/layer_similarity" in logged and any(k.startswith("analysis/ln_grad_var/") for k in logged)
    out = export(cfg, str(trained), tmp_path / "export", "hf")

    # the same files as the family writes them (its own key layout), loadable as they are
    assert set(load_file(str(base_dir / "model.safetensors"))) == set(load_file(str(out / "model.safetensors")))
    reloaded = AutoModelForImageTextToText.from_pretrained(out).eval()
    before = AutoModelForImageTextToText.from_pretrained(base_dir).state_dict()
    after = reloaded.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == expected_moved(family, set(before)), sorted(moved ^ expected_moved(family, set(before)))[:10]
    processor = AutoProcessor.from_pretrained(out)
    assert processor.chat_template == AutoProcessor.from_pretrained(base_dir).chat_template
    ours = build_model(cfg, str(trained)).eval()
    ours.loss_chunk = 0
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    enc = dict(processor(text=[text], images=[[Image.open(data_root / "img" / "0.png").convert("RGB")]],
                         add_special_tokens=False, return_tensors="pt"))
    ids, mask = enc.pop("input_ids"), enc.pop("attention_mask")
    with torch.no_grad():
        mine = ours(ids, mask, None, enc).logits
        theirs = reloaded(input_ids=ids, attention_mask=mask, **enc).logits
    assert (mine - theirs).abs().max().item() <= 1e-5


def test_lora_export_is_merged_into_the_family_class(data_root, tmp_path):
    from transformers import AutoModelForImageTextToText

    from mmln.run.build import build_model
    from mmln.export import export

    cfg, base_dir, run = fit_family("qwen2_5_vl", data_root, tmp_path, "tune.strategy=lora", "tune.lora.r=4")
    out = export(cfg, str(run.run_dir / "trainable.safetensors"), tmp_path / "export", "hf")
    after = load_file(str(out / "model.safetensors"))
    assert not any("lora" in k for k in after) and set(after) == set(load_file(str(base_dir / "model.safetensors")))
    reloaded = AutoModelForImageTextToText.from_pretrained(out).eval()
    ours = build_model(cfg, str(run.run_dir / "trainable.safetensors")).eval()
    ours.loss_chunk = 0
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        diff = (ours(ids, torch.ones_like(ids)).logits - reloaded(input_ids=ids).logits).abs().max().item()
    assert diff <= 1e-5


def test_llava_formats_refused_for_a_native_family(data_root, tmp_path):
    from mmln.config import ConfigError
    from mmln.export import export
    from mmln.model.families.tiny import write_tiny

    d = write_tiny("gemma3", tmp_path / "g")
    cfg = load_config(None, [f"model.init_from={d}"])
    with pytest.raises(ConfigError, match="exports only as --format hf"):
        export(cfg, None, tmp_path / "x", "hf-llava")


def test_resume_after_a_kill_is_bit_exact_on_a_family(data_root, tmp_path):
    """Stage 2 of a native family resumes from checkpoints/last.ckpt exactly as it would have run on."""
    base = ["train.max_steps=4", "train.save_every_n_steps=2", "analysis.grad_every_n_steps=0",
            "analysis.similarity=false"]
    _, _, ref = fit_family("qwen2_5_vl", data_root, tmp_path / "a", *base, "run_name=straight")
    with pytest.raises(RuntimeError, match="debug.fail_at_step"):
        fit_family("qwen2_5_vl", data_root, tmp_path / "b", *base, "run_name=killed", "debug.fail_at_step=3")
    _, _, again = fit_family("qwen2_5_vl", data_root, tmp_path / "b", *base, "run_name=killed", "resume=auto")
    a, b = load_file(str(ref.run_dir / "trainable.safetensors")), load_file(str(again.run_dir / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
