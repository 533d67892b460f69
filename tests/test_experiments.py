"""An `experiments/` target end to end at SCALE=tiny (`make table6 SCALE=tiny`), on a stand-in demo dir.

The stand-in demo dir holds synthetic data, a random tiny CLIP tower and a random tiny LLaMA with its
tokenizer (the demo's cached files, without the minutes of pretraining), so `xp-prep` only trains a
2-step stage 1. The target then sweeps two 4-step points, evaluates Flickr30k, runs the analysis
callbacks and writes the report. Marked slow (`make test-full`): a whole target through make is
~90 s on 2 free cores (several minutes when they are shared), beyond the fast suite's budget.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

HAS_JAVA = shutil.which("java") is not None


def stand_in_demo_dir(root: Path) -> Path:
    """The files `xp-prep` would otherwise build with `mmln.demo`'s pretraining, made small and random."""
    from transformers import CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from mmln.config import load_config
    from mmln.data.synth import synthesize, text_corpus
    from mmln.data.tokenizer import train_tiny_tokenizer
    from mmln.model.vision import hf_clip_config

    synthesize(root / "data", image_size=64, n_pretrain=8, n_instruct=16, n_mme_per_subtask=1, n_pope_images=2,
               n_vqa_images=2, n_caption_images=6, seed=0)
    (root / "data" / ".done").write_text("ok\n")
    vcfg = load_config(ROOT / "conf" / "demo" / "base.yaml", ["model.vision.path=null"]).model.vision
    CLIPVisionModel(hf_clip_config(vcfg)).save_pretrained(root / "vision")
    tok = train_tiny_tokenizer(text_corpus(800, seed=0), root / "base_lm", vocab_size=400)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(root / "base_lm")
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=0,
                                 tie_word_embeddings=False)).save_pretrained(root / "base_lm")
    return root


def make(*args: str, env: dict) -> subprocess.CompletedProcess:
    # -o: never (re)build the shared virtualenv from a test, whatever its stamp's age
    return subprocess.run(["make", "-s", "-C", str(ROOT), "-o", ".venv/.installed", *args], env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_JAVA, reason="Flickr30k CIDEr needs Java")
def test_table6_target_at_tiny_scale_writes_the_report_and_its_figures(tmp_path):
    demo = stand_in_demo_dir(tmp_path / "demo")
    env = {**os.environ, "MMLN_DEMO_DIR": str(demo), "PYTHONPATH": str(ROOT), "MMLN_QUIET": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    ovr = ("XP_OVR=tracking.experiment=xp_tiny train.max_steps=4 train.save_every_n_steps=4 eval.limit=4 "
           "analysis.similarity_samples=4 analysis.grad_every_n_steps=1 data.num_workers=0 "
           "train.global_batch_size=4 train.micro_batch_size=4")
    proc = make("table6", "SCALE=tiny", "LRS=3e-3", "XP_OVR1=train.max_steps=2 data.num_workers=0 train.global_batch_size=4 train.micro_batch_size=4", ovr, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = demo / "outputs" / "experiments" / "table6"
    md = (out / "report.md").read_text()
    assert "Table 6" in md and "| demo | finetune |" in md and "| demo | layernorm |" in md
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert "lr_curves_demo.png" in pngs
    assert any(p.startswith("analysis/demo-layernorm/") for p in pngs), pngs
    assert all((out / p).stat().st_size > 1000 for p in pngs)

    # a report that fails (here: an unknown experiment) fails the target, sweeps done or not
    proc = make("table6", "SCALE=tiny", "LRS=3e-3", "XP_MODELS=demo", "XP_EXPERIMENTS=nowhere", ovr, env=env)
    assert proc.returncode != 0 and "no MLflow experiment 'nowhere'" in proc.stderr


def test_demo_prepare_only_reuses_what_the_demo_dir_caches(tmp_path, capsys, monkeypatch):
    """`python -m mmln.demo --prepare-only` (xp-prep's first step) keeps a demo dir another recipe
    built, here one with no `RECIPE` marker, instead of deleting it as a full demo run would."""
    from mmln.demo import __main__ as demo

    root = stand_in_demo_dir(tmp_path / "demo")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    monkeypatch.setenv("MMLN_DEMO_DIR", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert demo.main(["--quick", "--prepare-only"]) == 0
    out = capsys.readouterr().out
    assert "data: cached" in out and "vision encoder: cached" in out and "base LM: cached" in out, out
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing rebuilt, nothing added
    assert not (tmp_path / "mlflow.db").exists()  # no stage ran
