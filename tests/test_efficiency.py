"""Efficiency plumbing: large run files are referenced, not copied, into MLflow's artifact store."""
from __future__ import annotations

import json
import os

from mlflow import MlflowClient

from mmln.tracking import log_file_or_reference


def test_large_files_are_logged_as_a_reference(tmp_path):
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.create_run(client.create_experiment("eff", artifact_location=str(tmp_path / "art")))
    small, big = tmp_path / "small.safetensors", tmp_path / "trainable.safetensors"
    small.write_bytes(b"x" * 100)
    big.write_bytes(b"x" * 5000)
    assert log_file_or_reference(client, run.info.run_id, small, 1000) == "small.safetensors"
    assert log_file_or_reference(client, run.info.run_id, big, 1000) == "trainable.safetensors.ref.json"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"small.safetensors", "trainable.safetensors.ref.json"}
    ref = json.loads(open(client.download_artifacts(run.info.run_id, "trainable.safetensors.ref.json", str(tmp_path / "dl"))).read())
    assert ref["bytes"] == 5000 and ref["path"] == str(big.resolve())
