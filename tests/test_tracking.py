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
