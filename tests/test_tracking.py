"""mmln.tracking on a real sqlite MLflow store: a moved or copied project keeps its artifacts beside its database."""
from __future__ import annotations

import shutil

from mlflow import MlflowClient

from mmln.tracking import get_or_create_experiment, tracking_uri


def test_a_copied_project_reads_and_writes_its_own_artifacts(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    uri_a = tracking_uri(f"sqlite:///{a}/mlflow.db")
    ca = MlflowClient(uri_a)
    exp = get_or_create_experiment(ca, "x", uri_a)
    run = ca.create_run(exp).info.run_id
    (tmp_path / "old.txt").write_text("old")
    ca.log_artifact(run, str(tmp_path / "old.txt"))

    shutil.copytree(a, tmp_path / "b")
    uri_b = tracking_uri(f"sqlite:///{tmp_path}/b/mlflow.db")  # opening the copy relocates it
    cb = MlflowClient(uri_b)
    assert cb.get_experiment(exp).artifact_location == (tmp_path / "b" / "mlartifacts").as_uri()
    assert cb.get_run(run).info.artifact_uri.startswith((tmp_path / "b" / "mlartifacts").as_uri() + "/")
    (tmp_path / "new.txt").write_text("new")
    cb.log_artifact(run, str(tmp_path / "new.txt"))
    assert {f.path for f in cb.list_artifacts(run)} == {"old.txt", "new.txt"}
    assert sorted(p.name for p in (a / "mlartifacts").rglob("*.txt")) == ["old.txt"]  # the original is untouched
    assert MlflowClient(tracking_uri(uri_a)).get_run(run).info.artifact_uri.startswith((a / "mlartifacts").as_uri())
    new_run = cb.create_run(exp).info.run_id  # and new runs land in the copy too
    assert cb.get_run(new_run).info.artifact_uri.startswith((tmp_path / "b" / "mlartifacts").as_uri())


def test_mlflow_has_one_owner():
    """No module outside the mmln/tracking/ package imports mlflow or reaches MLflow through a Lightning logger's
    client (`logger.experiment`): every MLflow call goes through `mmln.tracking.Tracker`."""
    import ast
    from pathlib import Path

    import mmln

    offenders = []
    for path in sorted(Path(mmln.__file__).parent.rglob("*.py")):
        if path.parent.name == "tracking" and path.parent.parent.name == "mmln":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                offenders.append(f"{path.name}:{node.lineno} imports mlflow")
            if isinstance(node, ast.Attribute) and node.attr == "experiment" and isinstance(node.value, ast.Name) \
                    and "logger" in node.value.id:
                offenders.append(f"{path.name}:{node.lineno} uses {node.value.id}.experiment")
    assert not offenders, offenders


def test_tracker_batches_ends_with_the_error_and_finds_runs_by_config_hash(tmp_path):
    from mmln.tracking import Tags, Tracker

    t = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    exp = t.experiment_id("x")
    assert t.experiment_id("x") == exp and t.find_experiment("nope") is None and "x" in t.experiment_names()
    run = t.start_run(exp, "r", {Tags.CONFIG_HASH: "h1"}, params={f"p{i}": i for i in range(250)})  # 3 param batches
    t.log_metrics(run, {f"m{i}": float(i) for i in range(2500)} | {"nan": float("nan")}, step=3)  # 3 metric batches
    t.set_tags(run, {"a": 1, "b": "two"} | {f"t{i}": i for i in range(150)})  # 2 tag batches
    got = t.get_run(run).data
    assert len(got.params) == 250 and got.params["p249"] == "249"
    assert len(got.metrics) == 2500 and got.metrics["m2499"] == 2499.0 and "nan" not in got.metrics
    assert got.tags["a"] == "1" and got.tags["b"] == "two" and got.tags["t149"] == "149"
    assert t.get_metric_history(run, "m7")[0].step == 3
    assert t.finished_run(exp, "h1") is None  # still RUNNING
    t.end(run, "FINISHED")
    assert t.finished_run(exp, "h1").info.run_id == run and t.finished_run(exp, "h2") is None
    failed = t.start_run(exp, "f", {})
    t.end(failed, "FAILED", ValueError("bad input"))
    assert t.get_run(failed).info.status == "FAILED" and t.get_run(failed).data.tags[Tags.ERROR] == "ValueError: bad input"
    assert t.find_run("0" * 32) is None and t.find_run(run).info.run_name == "r"
    assert {r.info.run_id for r in t.runs([exp])} == {run, failed}
    assert len(t.runs([exp], limit=1)) == 1


def test_the_dashboard_view_is_json_mlflow_stores_compressed_only_past_its_tag_limit(tmp_path):
    """`mmln.tracking.views`: the view MLflow's UI reads from `mlflow.sharedViewState.<key>` is plain JSON
    (sort, columns, every UI field), and "deflate;" + base64(zlib) only when JSON would pass MLflow's
    20,000-character limit; both are accepted by a real store and decode to the same view."""
    from mmln.tracking import Tracker
    from mmln.tracking.views import MAX_TAG_VALUE, SHARE_TAG, decode_view, save_comparison_view, view_url

    t = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    exp = t.experiment_id("views")
    run = t.start_run(exp, "layernorm-lr0.001", {"strategy": "layernorm", "lr": "0.001"})
    t.log_metrics(run, {"eval/pope_random_accuracy": 62.5, "eval/mme_perception": 700.0})
    key = save_comparison_view(t, exp, "val/loss", True, ["strategy", "lr"], ["eval/mme_perception", "eval/vqav2"])
    value = t.get_experiment(exp).tags[SHARE_TAG + key]
    view = decode_view(value)
    assert value.startswith("{") and view["orderByKey"] == "metrics.`val/loss`" and view["orderByAsc"] is True
    assert view["selectedColumns"] == ["tags.`strategy`", "tags.`lr`", "metrics.`val/loss`", "metrics.`eval/mme_perception`"]
    assert view["runsHiddenMode"] == "SHOW_ALL" and view["columnOrder"][:3] == ["attributes.`Run Name`", "tags.`strategy`", "tags.`lr`"]
    assert view_url("http://h:1", exp, key) == (f"http://h:1/#/experiments/{exp}/runs?viewStateShareKey={key}"
                                                "&compareRunsMode=TABLE&workflowType=machine_learning")
    many = {f"eval/m{i:04d}": float(i) for i in range(700)}  # ~30,000 characters of columns as JSON
    t.log_metrics(run, many)
    key = save_comparison_view(t, exp, "eval/m0000", False, ["strategy"], sorted(many))
    value = t.get_experiment(exp).tags[SHARE_TAG + key]
    assert value.startswith("deflate;") and len(value) <= MAX_TAG_VALUE
    assert decode_view(value)["selectedColumns"][1:] == [f"metrics.`{m}`" for m in sorted(many)]
