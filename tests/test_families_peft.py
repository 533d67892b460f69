"""`python -m mmln.export --format peft` on native families: the run's strategy (LN tuning, LoRA) as a
PEFT adapter over the family's own transformers class, loaded back by PEFT's own
`PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), DIR)` with logits equal
to mmln's (max |diff| <= 1e-5, fp32). Tiny random checkpoints written by the real classes; the tuned
tensors are random perturbations of every trainable tensor, so each one must travel."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mmln.config import load_config
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from mmln.model.families.tiny import write_tiny

    root = tmp_path_factory.mktemp("fpeft")
    Image.fromarray((np.random.RandomState(0).rand(40, 28, 3) * 255).astype("uint8")).save(root / "a.png")
    return root, {f: write_tiny(f, root / f) for f in ("qwen2_5_vl", "gemma3", "idefics3", "llava_onevision")}


def tuned(d, tmp_path, strategy, *extra):
    """(cfg, ckpt): the model of `strategy` with every trainable tensor moved at random, saved as a run's
    trainable.safetensors."""
    from mmln.run.build import build_model
    from mmln.model.checkpoint import save_trainable

    cfg = load_config(None, [f"model.init_from={d}", "model.dtype=float32", f"tune.strategy={strategy}",
                             "tune.lora.r=4", *extra])
    mllm = build_model(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in mllm.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return cfg, save_trainable(mllm, tmp_path / "run" / "trainable.safetensors")


def inputs(d, image):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(d)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return dict(processor(text=[text], images=[[Image.open(image).convert("RGB")]], add_special_tokens=False,
                          return_tensors="pt"))


@pytest.mark.parametrize("family,strategy", [("qwen2_5_vl", "layernorm"), ("qwen2_5_vl", "lora"),
                                             ("gemma3", "layernorm"), ("gemma3", "lora"),
                                             ("idefics3", "layernorm_simple"), ("idefics3", "lora"),
                                             ("qwen2_5_vl", "layernorm_lora"), ("qwen2_5_vl", "dora"),
                                             ("qwen2_5_vl", "ia3"), ("qwen2_5_vl", "vera")])
def test_peft_adapter_round_trips_through_peft_onto_the_family_class(base, tmp_path, family, strategy):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from mmln.run.build import build_model
    from mmln.export import export

    root, dirs = base
    cfg, ckpt = tuned(dirs[family], tmp_path, strategy)
    out = export(cfg, str(ckpt), tmp_path / "adapter", "peft")
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["peft_type"] == {"lora": "LORA", "layernorm_lora": "LORA", "dora": "LORA", "ia3": "IA3",
                                        "vera": "VERA"}.get(strategy, "LN_TUNING")
    # targets only inside the language model: no vision-tower projection got an adapter
    lm = {"qwen2_5_vl": "model.language_model.", "gemma3": "model.language_model.",
          "idefics3": "model.text_model."}[family]
    assert adapter_cfg["target_modules"] and all(t.startswith(lm) for t in adapter_cfg["target_modules"])
    keys = load_file(str(out / "adapter_model.safetensors"))
    assert not any(".visual.blocks." in k or "vision_tower" in k or "vision_model" in k for k in keys)

    ours = build_model(cfg, str(ckpt)).eval()
    ours.loss_chunk = 0
    ref = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(dirs[family]), str(out)).eval()
    enc = inputs(dirs[family], root / "a.png")
    ids, mask = enc.pop("input_ids"), enc.pop("attention_mask")
    with torch.no_grad():
        mine = ours(ids, mask, None, enc).logits
        theirs = ref(input_ids=ids, attention_mask=mask, **enc).logits
        untuned = AutoModelForImageTextToText.from_pretrained(dirs[family]).eval()(
            input_ids=ids, attention_mask=mask, **enc).logits
    assert (mine - theirs).abs().max().item() <= 1e-5
    assert (mine - untuned).abs().max().item() > 1e-3  # the adapter changed the model


def test_a_trained_tensor_peft_cannot_carry_is_one_line(base, tmp_path):
    """LLaVA-OneVision's projector includes image_newline, a bare parameter: PEFT's modules_to_save
    cannot hold it, so `layernorm` (which trains the projector) is refused naming it; the CLI says
    it in one line, exit 2."""
    root, dirs = base
    cfg, ckpt = tuned(dirs["llava_onevision"], tmp_path, "layernorm")
    cli = subprocess.run([sys.executable, "-m", "mmln.export", "--config", str(write_yaml(tmp_path, dirs)),
                          "--ckpt", str(ckpt), "--out", str(tmp_path / "x"), "--format", "peft",
                          "model.dtype=float32"], cwd=ROOT, capture_output=True, text=True)
    errors = [line for line in cli.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert cli.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: "), cli.stderr[-2000:]
    assert "image_newline" in errors[0] and "--format hf" in errors[0]
    assert not (tmp_path / "x").exists()


def write_yaml(tmp_path, dirs):
    p = tmp_path / "ov.yaml"
    p.write_text(f"model:\n  init_from: {dirs['llava_onevision']}\ntune:\n  strategy: layernorm\n")
    return p


def test_fit_writes_the_family_adapter_peft_loads(tmp_path):
    """Stage 2 of a family with `layernorm` writes `ln_tuning_adapter/` beside trainable.safetensors, as
    LLaVA runs do; PEFT loads it onto the family's class with the run's logits."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from mmln.run.build import build_model
    from tests.test_families_fit import fit_family, records

    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    rng = np.random.RandomState(0)
    for i in range(6):
        Image.fromarray((rng.rand(32, 32, 3) * 255).astype("uint8")).save(root / "img" / f"{i}.png")
    (root / "data.json").write_text(json.dumps(records()))
    cfg, base_dir, run = fit_family("qwen2_5_vl", root, tmp_path, "train.max_steps=2", "analysis.grad_every_n_steps=0",
                                    "analysis.similarity=false")
    adapter = run.run_dir / "ln_tuning_adapter"
    assert (adapter / "adapter_config.json").is_file()
    ours = build_model(cfg, str(run.run_dir / "trainable.safetensors")).eval()
    ours.loss_chunk = 0
    ref = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base_dir), str(adapter)).eval()
    enc = inputs(base_dir, root / "img" / "0.png")
    ids, mask = enc.pop("input_ids"), enc.pop("attention_mask")
    with torch.no_grad():
        diff = (ours(ids, mask, None, enc).logits - ref(input_ids=ids, attention_mask=mask, **enc).logits).abs().max()
    assert diff.item() <= 1e-5
