"""Sweeps, successive halving and the report on a native family (a tiny random Qwen2.5-VL written by
the real classes), with the same commands as on LLaVA: `python -m mmln.sweep --search halving`
(val-loss proxy, POPE at the end) and `--search grid`, then `python -m mmln.report`."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from tests.conftest import ROOT

ANSWERS = ["A red cat sits on a mat.", "No", "A blue square and a green circle.", "Yes"]
METRIC = "eval/pope_random_accuracy"


def family_world(root, n_records: int = 18):
    """A tiny Qwen2.5-VL checkpoint, `n_records` LLaVA records (images of several sizes), 4 held out
    for validation, and POPE in its on-disk format."""
    from mmln.data.synth import synthesize
    from mmln.model.families.tiny import write_tiny

    (root / "img").mkdir(parents=True)
    rng = np.random.RandomState(0)
    recs = []
    for i in range(n_records):
        h, w = [(40, 28), (32, 32), (24, 48)][i % 3]
        Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8")).save(root / "img" / f"{i}.png")
        recs.append({"id": f"r{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the image?"}, {"from": "gpt", "value": ANSWERS[i % 4]}]})
    (root / "train.json").write_text(json.dumps(recs))
    (root / "val.json").write_text(json.dumps(recs[:4]))
    bench = synthesize(root / "bench", image_size=64, n_pretrain=0, n_instruct=0, n_mme_per_subtask=1,
                       n_pope_images=2, n_vqa_images=1, n_caption_images=1)
    ckpt = write_tiny("qwen2_5_vl", root / "qwen", texts=ANSWERS)
    (root / "family.yaml").write_text(f"model:\n  name: tiny_qwen2_5_vl\n  init_from: {ckpt}\ntune:\n"
                                      "  strategy: layernorm\n")
    return [f"output_dir={root / 'outputs'}", f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
            "tracking.experiment=family_sweep", "stage=instruct", "data.num_workers=0", "model.dtype=float32",
            f"data.train.files=[{root / 'train.json'}]", f"data.train.image_folder={root / 'img'}",
            f"data.val.files=[{root / 'val.json'}]", f"data.val.image_folder={root / 'img'}",
            "train.global_batch_size=2", "train.micro_batch_size=1", "train.epochs=1", "train.warmup_ratio=0",
            "train.save_every_n_steps=1", "train.log_every_n_steps=1", "analysis.grad_every_n_steps=0",
            "analysis.similarity=false", "eval.limit=4", "eval.yes_no=logits", "eval.max_new_tokens=2",
            f"eval.pope_files=[{bench['pope_random']}]", f"eval.pope_images={bench['coco_val2014']}"]


def sweep(root, *args):
    return subprocess.run([sys.executable, "-m", "mmln.sweep", "--config", str(root / "family.yaml"), *args],
                          cwd=ROOT, capture_output=True, text=True)


def test_val_loss_proxy_on_a_family_equals_its_own_forward(tmp_path):
    """Halving's `val/loss` proxy on a family: the mean per-sample loss of the validation records
    through the family's processor equals the family's own forward with the same labels."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from mmln.config import load_config
    from mmln.lit.datamodule import MMLNDataModule
    from mmln.sweeps.proxy import val_loss

    world = family_world(tmp_path, n_records=4)
    cfg = load_config(str(tmp_path / "family.yaml"), world + ["eval.batch_size=1"])
    dm = MMLNDataModule(cfg, AutoTokenizer.from_pretrained(cfg.model.init_from))
    dm.setup()
    ref = AutoModelForImageTextToText.from_pretrained(cfg.model.init_from).eval()
    with torch.no_grad():
        want = []
        for i in range(len(dm.val_set)):
            b = dm.collate([dm.val_set[i]])
            want.append(float(ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"],
                                  **b["pixel_values"]).loss))
    assert val_loss(cfg, None) == pytest.approx(sum(want) / len(want), rel=1e-5)


@pytest.mark.slow
def test_halving_sweep_and_report_on_a_family(tmp_path):
    """18 records / batch 2 = 9 steps: rungs at 1, 3, 9 (first rung 1/9, eta 3); 3 lrs -> 1 reaches the end."""
    world = family_world(tmp_path)
    out = sweep(tmp_path, "--search", "halving", "--lrs", "1e-2", "1e-3", "1e-4", "--bench", "pope",
                "--select-metric", METRIC, "--proxy-metric", "val/loss", "--first-rung", "1/9", *world)
    assert out.returncode == 0, out.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("family_sweep").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("kind") == "sweep")
    children = {float(r.data.tags["lr"]): r for r in runs if r.data.tags.get("kind") != "sweep"}
    assert sorted(children) == [1e-4, 1e-3, 1e-2]
    states = sorted(r.data.tags["halving/state"] for r in children.values())
    assert states == ["finished", "pruned", "pruned"], states
    for r in children.values():  # the proxy (val loss through the family's processor) was scored at rung 0
        history = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "halving/proxy")}
        assert 1 in history and np.isfinite(history[1]) and history[1] > 0
    survivor = next(r for r in children.values() if r.data.tags["halving/state"] == "finished")
    assert 0 <= survivor.data.metrics[METRIC] <= 100  # POPE through the family's generate / logits
    assert parent.data.tags["best_lr/layernorm"] == survivor.data.tags["lr"] or \
        float(parent.data.tags["best_lr/layernorm"]) == float(survivor.data.tags["lr"])
    assert parent.data.metrics["halving/steps_spent"] < parent.data.metrics["halving/steps_full_grid"] == 27
    rep = subprocess.run([sys.executable, "-m", "mmln.report", "--experiment", "family_sweep", "--out",
                          str(tmp_path / "report"), "--select-metric", METRIC, "--tracking-uri",
                          f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-log"], cwd=ROOT, capture_output=True, text=True)
    assert rep.returncode == 0, rep.stderr[-4000:]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "layernorm" in md and "tiny_qwen2_5_vl" in md


@pytest.mark.slow
def test_grid_sweep_on_a_family(tmp_path):
    world = family_world(tmp_path, n_records=6)
    out = sweep(tmp_path, "--lrs", "1e-2", "1e-3", "--strategies", "layernorm", "layernorm_simple", "--bench", "pope",
                "--select-metric", METRIC, *world)
    assert out.returncode == 0, out.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("family_sweep").experiment_id])
    assert sum(METRIC in r.data.metrics for r in runs) >= 4
