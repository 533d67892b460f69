"""Every result says what it is (issue 26 item 2): the report's tables, printed tables and figures
carry their runs' scale (optimizer steps, samples seen, eval.limit) and say "smoke scale: not
evidence" below the `--smoke-*` thresholds; Table 1 keeps the untuned model's and chance's rows; a
figure whose data contradict the paper says so in its caption."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmln import report
from mmln.tracking import get_or_create_experiment, tracking_uri
from tests.test_report import FLICKR, client, make_run, rows

SMOKE = "smoke scale: not evidence"
ROOT = Path(__file__).resolve().parent.parent


def smoke_runs(c, exp):
    """Two learning rates of a `SCALE=tiny`-like sweep: 8 steps of 16 samples, evaluated on 16 items."""
    for lr, v in ((3e-3, 40.0), (3e-4, 30.0)):
        run = make_run(c, exp, "layernorm", lr, {FLICKR: v}, model="tiny", tags={"eval_limit": "16"})
        c.log_param(run, "train.max_steps", "8")  # a run logged before fit's train/steps: read from its params
        c.log_param(run, "train.global_batch_size", "16")


def test_smoke_scale_results_say_so_in_tables_printed_tables_and_figures(tmp_path, capsys):
    c = client()
    exp = get_or_create_experiment(c, "smoke_ln", tracking_uri())
    smoke_runs(c, exp)
    out = tmp_path / "r"
    assert report.main(["--experiment", "smoke_ln", "--out", str(out), "--no-log", "--tables", "table1,figures"]) == 0
    scale = "Scale: 8 optimizer steps, 128 samples seen, eval.limit 16; smoke scale: not evidence"
    md, printed = (out / "report.md").read_text(), capsys.readouterr().out
    assert md.count(scale) == 3  # the report's own line, Table 1's, the LR curves' caption
    assert scale in printed
    with Image.open(out / "lr_curves_tiny.png") as im:
        assert im.info["Description"].startswith(scale)

    # the threshold is an option: below it nothing is smoke, and the scale is still said
    assert report.main(["--experiment", "smoke_ln", "--out", str(out), "--no-log", "--tables", "table1,figures",
                        "--smoke-steps", "8", "--smoke-samples", "128", "--smoke-eval-limit", "16"]) == 0
    md = (out / "report.md").read_text()
    assert SMOKE not in md and "Scale: 8 optimizer steps, 128 samples seen, eval.limit 16." in md


def test_a_full_scale_run_is_not_smoke(tmp_path):
    c = client()
    exp = get_or_create_experiment(c, "full_ln", tracking_uri())
    make_run(c, exp, "layernorm", 1e-3, {FLICKR: 50.0, "train/steps": 1125.0, "train/samples_seen": 18000.0})
    out = tmp_path / "r"
    assert report.main(["--experiment", "full_ln", "--out", str(out), "--no-log", "--tables", "table1"]) == 0
    md = (out / "report.md").read_text()
    assert "Scale: 1,125 optimizer steps, 18,000 samples seen, full evaluations" in md and SMOKE not in md


def test_table1_keeps_the_untuned_and_chance_rows(tmp_path, tiny_cfg):
    """The untuned model's evaluation, as `mmln.evaluate --ckpt none` logs it, and chance, under Table 1's
    strategies; neither is a strategy anywhere else (Table A1, the paired tests)."""
    from mmln.evaluate import log_to_mlflow

    c = client()
    tiny_cfg.tracking.experiment = "base_ln"
    exp = get_or_create_experiment(c, "base_ln", tracking_uri())
    make_run(c, exp, "layernorm", 1e-3, {FLICKR: 50.0, "eval/mme_perception": 990.0}, model="tiny")
    untuned = {"eval/mme_perception": 568.3, "eval/pope_random_accuracy": 50.0, FLICKR: 1.2}
    log_to_mlflow(tiny_cfg, {"metrics": untuned, "benches": {"mme": {}, "pope": {}, "flickr30k": {}}}, None)
    exported = tiny_cfg.copy()
    exported.run_name = "export-layernorm-lr0.001"  # an export's evaluation: no checkpoint either, not untuned
    log_to_mlflow(exported, {"metrics": {"eval/mme_perception": 1.0}, "benches": {"mme": {}}}, None)
    out = tmp_path / "r"
    assert report.main(["--experiment", "base_ln", "--out", str(out), "--no-log", "--tables", "table1,tableA1"]) == 0
    t1 = {r["strategy"]: r for r in rows(out / "table1.csv")}
    assert list(t1) == ["layernorm", "untuned", "chance"]
    assert float(t1["untuned"]["MME-P"]) == 568.3 and float(t1["untuned"]["Flickr30k"]) == 1.2
    assert t1["untuned"]["run"].startswith("eval-tiny-untuned (")
    assert float(t1["chance"]["MME-P"]) == 750.0 and float(t1["chance"]["MME-C"]) == 300.0
    assert float(t1["chance"]["POPE-ran acc"]) == 50.0 and t1["chance"]["VQAv2"] == "" and t1["chance"]["Flickr30k"] == ""
    assert [r["strategy"] for r in rows(out / "tableA1.csv")] == ["layernorm"]


def log_analysis(c, exp, tmp_path, strategy, sim, grad_scale, seed):
    from mmln.analysis import GradientRecord, save_similarity

    rng = np.random.default_rng(seed)
    run = make_run(c, exp, strategy, 1e-3, {FLICKR: 1.0, "train/steps": 8.0, "train/samples_seen": 128.0})
    d = tmp_path / f"{exp}-{strategy}"
    save_similarity(d / "layer_similarity.npz", {"token": sim}, 8)
    rec = GradientRecord()
    for step in range(0, 10, 2):
        rec.add(step, {"layers.1.input_layernorm.weight": rng.normal(0, grad_scale, 16).astype(np.float32)})
    rec.save(d / "ln_grads.npz")
    c.log_artifacts(run, str(d), artifact_path="analysis")


def captions(out):
    found = {}
    for name in ("fig3_similarity_m7.png", "fig4_ln_grads_m7.png"):
        with Image.open(out / name) as im:
            found[name] = im.info.get("Description", "")
    return found


def test_a_figure_that_contradicts_the_paper_says_so_decided_from_its_data(tmp_path):
    c = client()
    same = np.eye(4) * 0.5 + 0.5
    # as the SCALE=tiny report had them: identical heatmaps, LayerNorm's gradients varying more than finetune's
    exp = get_or_create_experiment(c, "odd_ln", tracking_uri())
    log_analysis(c, exp, tmp_path, "finetune", same, 1e-3, 0)
    log_analysis(c, exp, tmp_path, "layernorm", same, 3e-3, 1)
    # as the paper has them: LayerNorm lower on both
    exp = get_or_create_experiment(c, "paper_ln", tracking_uri())
    log_analysis(c, exp, tmp_path, "finetune", np.full((4, 4), 0.9), 3e-3, 0)
    log_analysis(c, exp, tmp_path, "layernorm", np.full((4, 4), 0.6), 1e-3, 1)
    # LayerNorm's layers more alike than finetune's: Fig. 3 against the paper
    exp = get_or_create_experiment(c, "alike_ln", tracking_uri())
    log_analysis(c, exp, tmp_path, "finetune", np.full((4, 4), 0.6), 3e-3, 0)
    log_analysis(c, exp, tmp_path, "layernorm", np.full((4, 4), 0.9), 1e-3, 1)
    found = {}
    for name in ("odd_ln", "paper_ln", "alike_ln"):
        out = tmp_path / name
        assert report.main(["--experiment", name, "--out", str(out), "--no-log", "--tables", "figures"]) == 0
        found[name] = captions(out)
        for fig, text in found[name].items():
            assert f"`{fig}`: {text}" in (out / "report.md").read_text()
            assert text.startswith("Scale: 8 optimizer steps, 128 samples seen, full evaluations; " + SMOKE)

    odd = found["odd_ln"]
    assert "the two heatmaps are identical" in odd["fig3_similarity_m7.png"]
    assert "contradicts the paper: LayerNorm's gradient variance" in odd["fig4_ln_grads_m7.png"]
    assert "identical" not in found["paper_ln"]["fig3_similarity_m7.png"]
    assert "contradicts" not in "".join(found["paper_ln"].values())
    alike = found["alike_ln"]
    assert "contradicts the paper: LayerNorm's mean layer similarity (0.9000) is above finetune's (0.6000)" in \
        alike["fig3_similarity_m7.png"]
    assert "contradicts" not in alike["fig4_ln_grads_m7.png"]


@pytest.mark.parametrize("scale", ["full", "tiny"])
def test_make_table1_evaluates_the_untuned_model_once_before_its_report(scale):
    """Table 1's untuned row needs the untuned model's evaluation in the experiment: `make table1` runs
    it once per model (skipped when its scores.json exists), before the report, beside the reports."""
    cmd = subprocess.run(["make", "-n", "table1", f"SCALE={scale}", "STAMP="], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.replace("\\\n", " ")
    steps = [s.strip() for line in cmd.splitlines() for s in line.split("||")]
    untuned = [i for i, s in enumerate(steps) if "mmln.evaluate" in s and "--ckpt none" in s]
    report_at = next(i for i, s in enumerate(steps) if "mmln.report" in s)
    assert untuned and max(untuned) < report_at, cmd
    out = re.search(r"--out (\S+)", steps[untuned[0]]).group(1)
    assert f"test -f {out}/scores.json" in steps[untuned[0] - 1]
    assert out.rsplit("/", 1)[0] == re.search(r"--out (\S+)", steps[report_at]).group(1).rsplit("/", 1)[0]
