"""mmln.report on hand-made MLflow runs: every table's cells, the selection rules, empty tables."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from mmln import report
from mmln.tracking import get_or_create_experiment, tracking_uri

FLICKR = "eval/flickr30k_cider"


def client() -> MlflowClient:
    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def make_run(c, exp, strategy, lr, metrics, *, model="m7", status="FINISHED", variant="", data="all:all",
             vision=("hf_clip", "vit_large_patch14_clip_224.openai"), tags=None, stage="instruct"):
    t = {"model": model, "strategy": strategy, "lr": f"{lr:g}", "data_subset": data, "stage": stage,
         **({"variant": variant} if variant else {}), **(tags or {})}
    run = c.create_run(exp, run_name=f"{variant + '-' if variant else ''}{strategy}-lr{lr:g}", tags=t)
    c.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                params=[Param("train.lr", str(lr)), Param("model.vision.backend", vision[0]),
                        Param("model.vision.name", vision[1])])
    c.set_terminated(run.info.run_id, status)
    return run.info.run_id


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def test_tables_from_runs(tmp_path):
    c = client()
    exp = get_or_create_experiment(c, "m7_ln", tracking_uri())  # artifacts beside the test store, not in ./mlruns
    eff = {"params/trainable": 1000.0, "params/percent": 0.25, "perf/peak_mem_gb": 20.0, "params/total": 400000.0,
           "params/trainable_norms": 40.0, "params/trainable_adapters": 0.0}
    grid = {"finetune": {1e-3: 30.0, 1e-4: 40.0}, "layernorm": {1e-3: 50.0, 1e-4: 45.0}, "lora": {1e-3: 20.0}}
    for s, by_lr in grid.items():
        for lr, v in by_lr.items():
            extra = {"eval/mme_perception": 1000 + v, "eval/pope_random_f1": v / 100,
                     "analysis/layer_similarity": 0.9 if s == "finetune" else 0.7}
            make_run(c, exp, s, lr, {FLICKR: v, **extra, **eff, "params/percent": {"finetune": 95.0}.get(s, 0.25)})
    # ignored: a FAILED run with a higher score, a stage-1 run, a sweep parent
    make_run(c, exp, "layernorm", 6e-4, {FLICKR: 99.0}, status="FAILED")
    make_run(c, exp, "layernorm", 2e-3, {FLICKR: 98.0}, stage="pretrain")
    make_run(c, exp, "layernorm", 2e-3, {FLICKR: 97.0}, tags={"kind": "sweep"})
    # a newer run of the same point replaces the older one (lora 1e-3: 20 -> 25)
    make_run(c, exp, "lora", 1e-3, {FLICKR: 25.0, **eff})
    # Table 4, Table 3 (data types, a variant) and Table 5 (another vision encoder, a variant)
    make_run(c, exp, "connector", 1e-3, {FLICKR: 10.0})
    make_run(c, exp, "layernorm_no_connector", 1e-3, {FLICKR: 35.0})
    make_run(c, exp, "layernorm", 1e-3, {FLICKR: 60.0}, variant="conv20k", data="conversation:20000")
    make_run(c, exp, "layernorm", 1e-4, {FLICKR: 61.0}, variant="conv20k", data="conversation:20000")
    make_run(c, exp, "layernorm", 1e-3, {FLICKR: 5.0}, variant="imagenet",
             vision=("timm", "vit_large_patch16_224.augreg_in21k"))
    # an analysis figure on layernorm's best run (lr 1e-3), copied into the report
    best_ln = c.search_runs([exp], "tags.strategy = 'layernorm' and tags.lr = '0.001' and tags.stage = 'instruct' "
                                   "and attributes.status = 'FINISHED'", max_results=10)
    best_ln = next(r for r in best_ln if not r.data.tags.get("variant") and not r.data.tags.get("kind"))
    png = tmp_path / "layer_similarity.png"
    png.write_bytes(b"\x89PNG fake")
    c.log_artifact(best_ln.info.run_id, str(png), artifact_path="analysis")

    out = tmp_path / "report"
    assert report.main(["--experiment", "m7_ln", "--out", str(out)]) == 0

    t1 = rows(out / "table1.csv")
    assert [(r["strategy"], r["lr"], r["Flickr30k"]) for r in t1] == [
        ("finetune", "0.0001", "40.0"), ("lora", "0.001", "25.0"), ("layernorm", "0.001", "50.0"), ("chance", "-", "")]
    assert float(t1[3]["MME-P"]) == 750.0  # chance: random answers (tests/test_report_scale.py)
    assert float(t1[2]["MME-P"]) == 1050.0 and float(t1[2]["POPE-ran F1"]) == 0.5 and t1[2]["VQAv2"] == ""
    t2 = {r["strategy"]: r for r in rows(out / "table2.csv")}
    assert float(t2["finetune"]["trainable %"]) == 95.0 and float(t2["layernorm"]["peak mem (GB)"]) == 20.0
    assert set(t2) == {"finetune", "lora", "layernorm", "connector", "layernorm_no_connector"}
    assert float(t2["layernorm"]["total"]) == 400000.0 and float(t2["layernorm"]["norms"]) == 40.0
    assert float(t2["lora"]["adapters"]) == 0.0 and t2["lora"]["head"] == ""  # a group not logged stays empty
    t3 = [(r["strategy"], r["data"], r["lr"], float(r["Flickr30k"])) for r in rows(out / "table3.csv")]
    assert ("layernorm", "conversation (20000)", "0.0001", 61.0) in t3 and ("layernorm", "all", "0.001", 50.0) in t3
    assert all(r[0] != "layernorm" or r[3] != 5.0 for r in t3)  # the ImageNet-ViT run is not a data-type row
    assert {r[0] for r in t3} == {"layernorm"}  # only strategies run on more than one data subset
    t4 = [(r["strategy"], float(r["Flickr30k"])) for r in rows(out / "table4.csv")]
    assert t4 == [("layernorm", 50.0), ("connector", 10.0), ("layernorm_no_connector", 35.0)]
    t5 = {(r["strategy"], r["vision"]): float(r["Flickr30k"]) for r in rows(out / "table5.csv")}
    assert t5[("layernorm", "timm:vit_large_patch16_224.augreg_in21k")] == 5.0
    assert t5[("layernorm", "CLIP (hf_clip)")] == 50.0 and ("layernorm", "conversation (20000)") not in t5
    assert {s for s, _ in t5} == {"layernorm"}
    t6 = {r["strategy"]: r["layer similarity"] for r in rows(out / "table6.csv")}
    assert float(t6["finetune"]) == 0.9 and float(t6["layernorm"]) == 0.7 and t6["connector"] == ""
    a1 = {r["strategy"]: r for r in rows(out / "tableA1.csv")}
    assert list(a1["finetune"])[2:] == ["0.001", "0.0001"]  # learning rates, highest first
    assert float(a1["finetune"]["0.001"]) == 30.0 and float(a1["layernorm"]["0.0001"]) == 45.0
    assert a1["lora"]["0.0001"] == "" and float(a1["lora"]["0.001"]) == 25.0
    md = (out / "report.md").read_text()
    assert "| m7 | layernorm | **50.00** | 45.00 |" in md
    assert md.count("No data") == 1 and "No data: no pair of strategies with per-item answers" in md  # no answer files here
    assert (out / "analysis" / "m7-layernorm" / "layer_similarity.png").read_bytes() == b"\x89PNG fake"
    assert (out / "lr_curves_m7.png").stat().st_size > 1000 and (out / "data_types_m7.png").is_file()
    rep = c.search_runs([exp], "tags.kind = 'report'")
    assert len(rep) == 1 and rep[0].data.tags["report_scope"] == "m7_ln"
    logged = {a.path for a in c.list_artifacts(rep[0].info.run_id, "report")}
    assert {"report/report.md", "report/table1.csv", "report/tableA1.csv"} <= logged
    # a second report reuses the report run
    assert report.main(["--experiment", "m7_ln", "--out", str(out), "--tables", "tableA1"]) == 0
    assert len(c.search_runs([exp], "tags.kind = 'report'")) == 1


def test_tables_without_data_say_so(tmp_path, capsys):
    c = client()
    exp = get_or_create_experiment(c, "empty_ln", tracking_uri())
    make_run(c, exp, "layernorm", 1e-3, {"train/loss": 1.0})  # a run, but nothing any table shows
    out = tmp_path / "r"
    assert report.main(["--experiment", "empty_ln", "--out", str(out), "--no-log"]) == 0
    md = (out / "report.md").read_text()
    assert md.count("No data:") == 8 and not list(out.glob("*.csv"))  # 7 tables + the paired tests
    assert "No figures" in md
    assert report.main(["--experiment", "nowhere"]) == 2
    assert "no MLflow experiment 'nowhere'" in capsys.readouterr().err


def test_default_output_from_another_cwd_and_the_row_rule(tmp_path, monkeypatch, capsys):
    """The default `--out` (relative) works from any working directory, analysis figures included;
    with `--config`, a row comes from the run of the reference config even when a smoke run of
    another config (here: train.max_steps=8) is newer, and a full evaluation beats a limited one."""
    from tests.conftest import TINY

    c = client()
    exp = get_or_create_experiment(c, "tiny_ln", tracking_uri())
    ref = make_run(c, exp, "layernorm", 1e-3, {FLICKR: 50.0}, model="tiny")
    c.log_param(ref, "train.max_steps", "-1")  # the config default
    smoke = make_run(c, exp, "layernorm", 1e-3, {FLICKR: 10.0}, model="tiny")
    c.log_param(smoke, "train.max_steps", "8")
    full = make_run(c, exp, "lora", 1e-3, {FLICKR: 30.0}, model="tiny")
    make_run(c, exp, "lora", 1e-3, {FLICKR: 5.0}, model="tiny", tags={"eval_limit": "16"})  # newer, limited
    png = tmp_path / "layer_similarity.png"
    png.write_bytes(b"\x89PNG fake")
    c.log_artifact(ref, str(png), artifact_path="analysis")
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)

    assert report.main(["--config", str(TINY), "tracking.experiment=tiny_ln", "--no-log"]) == 0  # its experiment
    out = work / "outputs" / "tiny_ln" / "report"
    t1 = {r["strategy"]: r for r in rows(out / "table1.csv")}
    assert float(t1["layernorm"]["Flickr30k"]) == 50.0 and t1["layernorm"]["run"] == f"layernorm-lr0.001 ({ref[:8]})"
    assert float(t1["lora"]["Flickr30k"]) == 30.0 and t1["lora"]["run"] == f"lora-lr0.001 ({full[:8]})"
    assert (out / "analysis" / "tiny-layernorm" / "layer_similarity.png").is_file()
    md = (out / "report.md").read_text()
    assert "a run of the reference config (`--config`) first" in md and f"`layernorm-lr0.001 ({ref[:8]})`" in md

    # without --config every run counts as the reference's: the newest full evaluation wins, and says so
    assert report.main(["--experiment", "tiny_ln", "--no-log", "--tables", "table1"]) == 0
    t1 = {r["strategy"]: r for r in rows(out / "table1.csv")}
    assert float(t1["layernorm"]["Flickr30k"]) == 10.0 and smoke[:8] in t1["layernorm"]["run"]
    assert float(t1["lora"]["Flickr30k"]) == 30.0


def test_paper_figures_put_finetune_and_layernorm_side_by_side(tmp_path):
    """Fig. 3 and Fig. 4 from the best finetune and LayerNorm runs' analysis/*.npz (as fit logs them)."""
    import numpy as np
    from PIL import Image

    from mmln.analysis import GradientRecord, save_similarity

    c = client()
    exp = get_or_create_experiment(c, "fig_ln", tracking_uri())
    rng = np.random.default_rng(0)
    for strategy, scale in (("finetune", 1e-3), ("layernorm", 3e-3)):
        run = make_run(c, exp, strategy, 1e-3, {FLICKR: 1.0})
        d = tmp_path / strategy
        save_similarity(d / "layer_similarity.npz", {"token": np.eye(4) * 0.5 + 0.5}, 8)
        rec = GradientRecord()
        for step in range(0, 10, 2):
            rec.add(step, {"layers.1.input_layernorm.weight": rng.normal(0, scale, 16).astype(np.float32)})
        rec.save(d / "ln_grads.npz")
        c.log_artifacts(run, str(d), artifact_path="analysis")
    out = tmp_path / "report"
    assert report.main(["--experiment", "fig_ln", "--out", str(out), "--no-log", "--tables", "figures"]) == 0
    for name in ("fig3_similarity_m7.png", "fig4_ln_grads_m7.png"):
        with Image.open(out / name) as im:
            assert im.width > 1.6 * im.height  # two panels side by side
    assert "`fig4_ln_grads_m7.png`" in (out / "report.md").read_text()
