"""mmln.sweep end to end on CPU: a two-point sweep with one point failing, its resume, idempotent
re-runs, the report built from those runs, a SLURM array script, and a REST read through a real
loopback MLflow server."""
from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mmln import sweep
from mmln.config import load_config
from tests.conftest import TINY, make_world

LRS = ["1e-3", "1e-4"]
METRIC = "eval/pope_random_accuracy"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("sweep_world"), n_pretrain=4, n_instruct=12,
                      n_mme_per_subtask=1, n_pope_images=2, n_vqa_images=1, n_caption_images=5)[0]


def overrides(world: Path, db: Path) -> list[str]:
    w = world
    return [f"model.llm.tokenizer={w / 'tokenizer'}", f"output_dir={db.parent / 'outputs'}", f"tracking.uri=sqlite:///{db}",
            "tracking.experiment=tiny_sweep", "stage=instruct", "data.template=vicuna_v1", "data.num_workers=0",
            f"data.train.files=[{w / 'llava_instruct/llava_instruct_80k.json'}]",
            f"data.train.image_folder={w / 'coco/train2017'}", "train.global_batch_size=4", "train.micro_batch_size=4",
            "train.max_steps=3", "train.save_every_n_steps=1", "train.log_every_n_steps=1", "model.max_length=512",
            "analysis.grad_every_n_steps=0", "analysis.similarity=false", "eval.limit=8", "eval.yes_no=logits",
            f"eval.pope_files=[{w / 'pope/coco_pope_random.json'}]", f"eval.pope_images={w / 'coco/val2014'}"]


def sweep_args(world, db, *extra) -> list[str]:
    return ["--config", str(TINY), "--strategies", "layernorm", "--lrs", *LRS, "--bench", "pope",
            "--select-metric", METRIC, *extra, *overrides(world, db)]


def child_runs(client: MlflowClient) -> dict[str, object]:
    exp = client.get_experiment_by_name("tiny_sweep")
    return {r.info.run_id: r for r in client.search_runs([exp.experiment_id])}


@pytest.fixture(scope="module")
def swept(world, tmp_path_factory):
    """Sweep 1: lr=1e-4 fails at step 2 (a checkpoint of step 1 exists). Sweep 2: it resumes and
    finishes, lr=1e-3 is skipped. Sweep 3: everything is skipped."""
    db = tmp_path_factory.mktemp("sweep_store") / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    fail = ["--point-overrides", "lr=1e-4:debug.fail_at_step=2"]
    rc1 = sweep.main(sweep_args(world, db, *fail))
    after1 = {k: (r.info.status, r.info.run_name, dict(r.data.tags)) for k, r in child_runs(client).items()}
    rc2 = sweep.main(sweep_args(world, db))
    after2 = child_runs(client)
    rc3 = sweep.main(sweep_args(world, db))
    return dict(db=db, client=client, rc=(rc1, rc2, rc3), after1=after1, after2=after2, after3=child_runs(client))


def by_name(runs: dict, name: str, status: str | None = None):
    found = [r for r in runs.values() if r.info.run_name == name and status in (None, r.info.status)]
    assert len(found) == 1, [(r.info.run_name, r.info.status) for r in runs.values()]
    return found[0]


def test_a_failing_point_is_failed_and_the_others_finish(swept):
    assert swept["rc"][0] == 1  # a point failed: exit code 1 at the end
    status = {name: st for st, name, tags in swept["after1"].values() if tags.get("kind") != "sweep"}
    assert status == {"layernorm-lr0.001": "FINISHED", "layernorm-lr0.0001": "FAILED"}
    failed = next(tags for st, name, tags in swept["after1"].values() if st == "FAILED")
    assert "fail_at_step" in failed["error"]
    parent = next(k for k, (st, n, tags) in swept["after1"].items() if tags.get("kind") == "sweep")
    assert swept["after1"][parent][0] == "FAILED"
    for st, name, tags in swept["after1"].values():  # every child: linked, tagged, grouped
        if tags.get("kind") != "sweep":
            assert tags["mlflow.parentRunId"] == parent and tags["sweep_id"] == swept["after1"][parent][2]["sweep_id"]
            assert tags["strategy"] == "layernorm" and tags["lr"] in ("0.001", "0.0001") and len(tags["config_hash"]) == 16


def test_rerun_resumes_the_failed_point_then_skips_everything(swept, tmp_path):
    rc1, rc2, rc3 = swept["rc"]
    assert rc2 == 0 and rc3 == 0
    failed_id = next(k for k, (st, n, t) in swept["after1"].items() if st == "FAILED")
    resumed = swept["after2"][failed_id]  # the same MLflow run continued from checkpoints/last.ckpt
    assert resumed.info.status == "FINISHED" and METRIC in resumed.data.metrics
    assert set(swept["after2"]) == set(swept["after1"])  # sweep 2 made no new run (parent reused, point resumed)
    assert set(swept["after3"]) == set(swept["after2"])  # sweep 3 skipped both points ...
    for run_id, run in swept["after3"].items():  # ... without touching them (a re-fit would end them again)
        if run.data.tags.get("kind") != "sweep":
            assert run.info.end_time == swept["after2"][run_id].info.end_time
    run_dir = Path(swept["db"]).parent / "outputs" / "tiny_sweep" / "layernorm-lr0.0001"
    assert (run_dir / "config_hash").read_text().strip() == resumed.data.tags["config_hash"]
    assert (run_dir / "mlflow_run_id").read_text().strip() == failed_id

    parent = next(r for r in swept["after3"].values() if r.data.tags.get("kind") == "sweep")
    children = [r for r in swept["after3"].values() if r.data.tags.get("kind") != "sweep"]
    top = max(children, key=lambda r: (r.data.metrics[METRIC], float(r.data.tags["lr"])))
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best_lr/layernorm"] == top.data.tags["lr"]
    assert parent.data.tags["best_run/layernorm"] == top.info.run_id
    assert parent.data.metrics[f"best_{METRIC}/layernorm"] == top.data.metrics[METRIC]
    assert parent.data.metrics["sweep/n_failed"] == 0 and parent.data.metrics["sweep/n_points"] == 2
    # the dashboard: a parent named after what it sweeps, every point its child (reused ones too),
    # the comparison (strategies x lrs, best in bold) and the LR curve on the parent
    assert parent.info.run_name == "tiny layernorm x 2 lrs"
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    client = swept["client"]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert logged == {"comparison/comparison.md", "comparison/lr_curves_tiny.png"}
    with open(client.download_artifacts(parent.info.run_id, "comparison/comparison.md", str(tmp_path))) as f:
        md = f.read()
    assert f"| layernorm | " in md and f"**{top.data.metrics[METRIC]:.4g}**" in md and top.info.run_id in md
    assert md.splitlines()[2].startswith("_Scale: ") and "smoke scale: not evidence" in md  # a tiny sweep says so
    exp = client.get_experiment_by_name("tiny_sweep")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's training layout


def test_report_from_the_sweep_runs(swept, tmp_path):
    from mmln import report

    out = tmp_path / "report"
    assert report.main(["--experiment", "tiny_sweep", "--out", str(out), "--select-metric", METRIC,
                        "--tracking-uri", f"sqlite:///{swept['db']}"]) == 0
    children = {r.data.tags["lr"]: r for r in swept["after3"].values() if r.data.tags.get("kind") != "sweep"}
    a1 = list(csv.DictReader((out / "tableA1.csv").open()))
    assert len(a1) == 1 and a1[0]["strategy"] == "layernorm"
    for lr, run in children.items():
        assert float(a1[0][lr]) == run.data.metrics[METRIC]
    parent = next(r for r in swept["after3"].values() if r.data.tags.get("kind") == "sweep")
    t1 = list(csv.DictReader((out / "table1.csv").open()))
    assert [(r["model"], r["strategy"], r["lr"]) for r in t1] == [("tiny", "layernorm", parent.data.tags["best_lr/layernorm"]),
                                                                    ("tiny", "chance", "-")]
    best = children[parent.data.tags["best_lr/layernorm"]]
    assert float(t1[0]["POPE-ran acc"]) == best.data.metrics[METRIC] and t1[0]["Flickr30k"] == ""
    t2 = next(csv.DictReader((out / "table2.csv").open()))
    assert float(t2["trainable"]) == best.data.metrics["params/trainable"]
    md = (out / "report.md").read_text()
    assert "No data: no analysis/layer_similarity metric." in md and (out / "lr_curves_tiny.png").stat().st_size > 0
    assert "smoke scale: not evidence" in md  # the sweep's few steps


def test_rest_api_of_a_loopback_server_lists_the_sweep(swept, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow = Path(os.sys.executable).parent / "mlflow"
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", f"sqlite:///{swept['db']}", "--host",
                             "127.0.0.1", "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline = time.time() + 120
        while True:
            try:
                exp = json.load(urllib.request.urlopen(f"{base}/experiments/get-by-name?experiment_name=tiny_sweep",
                                                       timeout=5))["experiment"]
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-2000:]
                time.sleep(0.5)
        parent = next(r for r in swept["after3"].values() if r.data.tags.get("kind") == "sweep")
        body = json.dumps({"experiment_ids": [exp["experiment_id"]],
                           "filter": f"tags.sweep_id = '{parent.data.tags['sweep_id']}'"}).encode()
        req = urllib.request.Request(f"{base}/runs/search", data=body, headers={"Content-Type": "application/json"})
        runs = json.load(urllib.request.urlopen(req, timeout=30))["runs"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
    names = sorted(r["info"]["run_name"] for r in runs)
    assert names == sorted(["layernorm-lr0.001", "layernorm-lr0.0001", "tiny layernorm x 2 lrs"])
    tags = {r["info"]["run_name"]: {t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs}
    assert tags["layernorm-lr0.001"]["mlflow.parentRunId"] == parent.info.run_id
    assert tags["layernorm-lr0.001"]["model"] == "tiny"


# ------------------------------------------------------------------------ no training needed
def test_config_hash_ignores_volatile_keys_only():
    a = load_config(TINY, ["train.lr=1e-3"])
    assert sweep.config_hash(a) == sweep.config_hash(load_config(TINY, ["train.lr=1e-3", "resume=never", "quiet=true",
                                                                       "debug.fail_at_step=3"]))
    assert sweep.config_hash(a) != sweep.config_hash(load_config(TINY, ["train.lr=1e-4"]))


def test_point_overrides_select_points():
    points = sweep.plan(str(TINY), ["layernorm", "lora"], [1e-3, 1e-4], ["train.max_steps=2"],
                        ["lr=1e-4,strategy=lora:debug.fail_at_step=1 train.seed=7", "lr=1e-3:train.seed=5"])
    seeds = {(p.strategy, p.lr): (p.cfg.train.seed, p.cfg.debug.fail_at_step) for p in points}
    assert seeds == {("layernorm", 1e-3): (5, None), ("layernorm", 1e-4): (42, None),
                     ("lora", 1e-3): (5, None), ("lora", 1e-4): (7, 1)}
    assert [p.name for p in points] == ["layernorm-lr0.001", "layernorm-lr0.0001", "lora-lr0.001", "lora-lr0.0001"]
    assert sweep.point_tags(points[3], "P") == {"config_hash": points[3].hash, "sweep_point": "3", "mlflow.parentRunId": "P"}
    v = sweep.plan(str(TINY), ["layernorm"], [1e-3], [], [], variant="conv20k")[0]
    assert v.name == "conv20k-layernorm-lr0.001" and sweep.point_tags(v, None)["variant"] == "conv20k"
    with pytest.raises(Exception, match="point-overrides"):
        sweep.parse_point_overrides(["debug.fail_at_step=1"])


def test_bad_grid_fails_before_any_run(tmp_path, capsys):
    assert sweep.main(["--config", str(TINY), "--strategies", "nonsense", "--lrs", "1e-3"]) == 2
    assert "unknown strategy nonsense" in capsys.readouterr().err
    assert sweep.main(["--config", str(TINY), "--bench", "pope", "--lrs", "1e-3"]) == 2  # default metric is flickr30k's
    assert "--select-metric eval/flickr30k_cider" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_slurm_array_script(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(TINY), "--strategies", "layernorm", "finetune", "--lrs", "1e-3", "2e-5", "--variant", "v",
            "--launcher", "slurm", "--slurm-opt=--partition=gpu", "--final-bench", "mme",
            f"output_dir={tmp_path / 'outputs'}", "tracking.experiment=slurm_x", "train.max_steps=5"]
    assert sweep.main(["--dry-run", *args]) == 0  # the plan, nothing written or created
    plan_out = capsys.readouterr().out
    assert "v-finetune-lr2e-05" in plan_out and not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()

    assert sweep.main(args) == 0
    out = capsys.readouterr().out
    scripts = sorted((tmp_path / "outputs" / "slurm_x").glob("sweep_*.sbatch"))
    assert len(scripts) == 2 and "sbatch --parsable" in out and "--dependency=afterany" in out
    for s in scripts:
        assert subprocess.run(["bash", "-n", str(s)], capture_output=True).returncode == 0, s.read_text()
    array = next(s for s in scripts if "summary" not in s.name).read_text()
    assert f"#SBATCH --output={tmp_path}/outputs/slurm_x/slurm/" in array and (tmp_path / "outputs/slurm_x/slurm").is_dir()
    assert "#SBATCH --array=0-3" in array and "#SBATCH --partition=gpu" in array and "#SBATCH --gres=gpu:1" in array
    # the task's command line, parsed back, is the same grid (same configs, hence the same hashes)
    line = next(l for l in array.splitlines() if "--only-index" in l)
    argv = shlex.split(line.replace('"$SLURM_ARRAY_TASK_ID"', "3"))
    assert argv[1:3] == ["-m", "mmln.sweep"]
    task = sweep.parse_args(argv[3:])
    assert task.only_index == 3 and task.final_bench == ["mme"]
    again = sweep.plan(task.config, task.strategies, task.lrs, task.overrides, task.point_overrides, task.variant)
    first = sweep.plan(str(TINY), ["layernorm", "finetune"], [1e-3, 2e-5],
                       [f"output_dir={tmp_path / 'outputs'}", "tracking.experiment=slurm_x", "train.max_steps=5"], [], "v")
    assert [p.hash for p in again] == [p.hash for p in first]
    sweep_id = scripts[0].name.split("_")[1].split(".")[0]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])  # the store, the experiment and the parent run exist before any task starts
    runs = client.search_runs([client.get_experiment_by_name("slurm_x").experiment_id])
    assert [(r.data.tags["kind"], r.data.tags["sweep_id"]) for r in runs] == [("sweep", sweep_id)]
    assert f"--sweep-id {sweep_id}" in array and f"MLFLOW_TRACKING_URI=sqlite:///{tmp_path}/mlflow.db" in array


def test_a_run_of_another_config_is_never_moved_aside_silently(world, tmp_path, capsys):
    """The point's run dir holds a finished run of another config (e.g. the demo's, before a smoke
    sweep with other overrides): --dry-run lists the move, a real sweep warns before it trains."""
    db = tmp_path / "mlflow.db"
    args = sweep_args(world, db, "--lrs", "1e-3", "--bench", "none", "--select-metric", "params/percent")
    (p,) = sweep.plan(str(TINY), ["layernorm"], [1e-3], overrides(world, db))
    p.run_dir.mkdir(parents=True)
    (p.run_dir / "config_hash").write_text("0123456789abcdef\n")
    (p.run_dir / "mlflow_run_id").write_text("feedc0de\n")
    (p.run_dir / "trainable.safetensors").write_bytes(b"old")
    assert sweep.main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would move aside {p.run_dir} (finished run feedc0de, config 01234567) -> {p.run_dir}.replaced-01234567" in out
    assert (p.run_dir / "trainable.safetensors").read_bytes() == b"old"  # a dry run moves nothing

    assert sweep.main([*args, "train.max_steps=1"]) == 0
    err = capsys.readouterr().err
    warn = err.index("WARNING: 1 run dir(s) hold runs of another config")
    assert warn < err.index("layernorm-lr0.001: training") and "finished run feedc0de" in err
    assert (Path(f"{p.run_dir}.replaced-01234567") / "trainable.safetensors").read_bytes() == b"old"


def test_keys_added_to_the_schema_keep_a_finished_sweeps_hashes():
    """An upgrade that adds config keys must not retrain a finished sweep: at their old-behaviour value
    the new keys stay out of the hash (the values were computed by mmln at 6b001a6, before the image
    limits and tune.vision_norms existed); any other value is a new point."""
    from mmln.config import load_config
    from mmln.sweeps.plan import config_hash

    base = ["tune.strategy=layernorm", "train.lr=0.001"]
    assert config_hash(load_config(TINY, base)) == "5f3069121b31e781"
    for changed in ("data.max_image_aspect=20", "tune.vision_norms=true", "train.group_lr.vision_norms=1e-4"):
        assert config_hash(load_config(TINY, [*base, changed])) != "5f3069121b31e781", changed
