"""MLflow: one embedded sqlite store by default, absolute paths, small artifacts only.

URI precedence: `tracking.uri` in the config, then $MLFLOW_TRACKING_URI, then `sqlite:///mlflow.db`
in the working directory. A relative sqlite path is made absolute (a relative one would create a
new database per working directory). Artifacts live beside the database in `mlartifacts/`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

SQLITE = "sqlite:///"


def tracking_uri(configured: Optional[str] = None) -> str:
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE}mlflow.db"
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        uri = SQLITE + str(Path(uri[len(SQLITE):]).resolve())
    return uri


def artifact_root(uri: str) -> Optional[str]:
    """Where new experiments keep artifacts: beside a sqlite database, else the server's default."""
    if uri.startswith(SQLITE):
        return (Path(uri[len(SQLITE):]).parent / "mlartifacts").resolve().as_uri()
    return None


def get_or_create_experiment(client, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root(uri))
    except Exception:  # created concurrently by another run of a sweep
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def make_logger(experiment: str, run_name: str, uri: str, tags: dict[str, str], run_id: Optional[str] = None):
    """Lightning's MLFlowLogger on an experiment we create (so its artifact location is ours)."""
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow import MlflowClient

    get_or_create_experiment(MlflowClient(uri), experiment, uri)
    return MLFlowLogger(experiment_name=experiment, run_name=run_name, tracking_uri=uri, tags=tags,
                        log_model=False, run_id=run_id)
