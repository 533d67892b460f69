"""MLflow: one embedded sqlite store by default, absolute paths, small artifacts only.

URI precedence: `tracking.uri` in the config, then $MLFLOW_TRACKING_URI, then `sqlite:///mlflow.db`
in the working directory. A relative sqlite path is made absolute (a relative one would create a
new database per working directory). Artifacts live beside the database in `mlartifacts/`, also
after the project folder is moved or copied (`relocate_artifacts`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

SQLITE = "sqlite:///"


def tracking_uri(configured: Optional[str] = None) -> str:
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE}mlflow.db"
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        uri = SQLITE + str(Path(uri[len(SQLITE):]).resolve())
    relocate_artifacts(uri)
    return uri


def relocate_artifacts(uri: str) -> int:
    """Keep a moved or copied project's artifacts beside its own database.

    MLflow stores absolute artifact URIs, so after `mv project elsewhere` (or a copy) a sqlite store
    would still read and write the old `<dir>/mlartifacts`. Every experiment whose location is some
    other folder's `mlartifacts` (the layout `artifact_root` creates) is pointed at this database's
    `mlartifacts`, with its runs and logged models; nothing else is touched. Returns how many
    experiments moved (0 when nothing needed it, which costs one SELECT)."""
    if not uri.startswith(SQLITE):
        return 0
    db = Path(uri[len(SQLITE):])
    if not db.is_file():
        return 0
    import sqlite3

    new = artifact_root(uri)
    moved = 0
    with sqlite3.connect(db, timeout=60) as con:
        try:
            rows = con.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall()
        except sqlite3.OperationalError:  # a store MLflow has not created its tables in yet
            return 0
        for exp_id, loc in rows:
            if not loc or not loc.startswith("file://") or "/mlartifacts" not in loc:
                continue
            old = loc[: loc.rindex("/mlartifacts") + len("/mlartifacts")]
            if old == new or loc[len(old):][:1] not in ("", "/"):
                continue
            n = len(old) + 1
            con.execute("UPDATE experiments SET artifact_location = ? || substr(artifact_location, ?) "
                        "WHERE experiment_id = ?", (new, n, exp_id))
            for table, col in (("runs", "artifact_uri"), ("logged_models", "artifact_location")):
                try:
                    con.execute(f"UPDATE {table} SET {col} = ? || substr({col}, ?) "
                                f"WHERE experiment_id = ? AND substr({col}, 1, ?) = ?", (new, n, exp_id, n - 1, old))
                except sqlite3.OperationalError:  # an older schema without that table
                    pass
            moved += 1
    if moved:  # MLflow caches each run's artifact repository per process: forget the old locations
        try:
            from mlflow.tracking._tracking_service import utils as _mlflow_utils

            _mlflow_utils._artifact_repos_cache.clear()
        except (ImportError, AttributeError):  # another MLflow layout: a new process reads the new locations
            pass
    return moved


def artifact_root(uri: str) -> Optional[str]:
    """Where new experiments keep artifacts: beside a sqlite database, else the server's default."""
    if uri.startswith(SQLITE):
        return (Path(uri[len(SQLITE):]).parent / "mlartifacts").resolve().as_uri()
    return None


# MLflow 3's UI opens an experiment without this tag in its GenAI layout (runs labelled "Evaluations")
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def get_or_create_experiment(client, name: str, uri: str) -> str:
    """The experiment's id; created with its artifacts beside the store and tagged as a training
    experiment (`EXPERIMENT_TAGS`), which an existing experiment of ours gets too when it lacks it."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        for k, v in EXPERIMENT_TAGS.items():
            if k not in exp.tags:
                client.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root(uri), tags=EXPERIMENT_TAGS)
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


def log_file_or_reference(client, run_id: str, path: Path, max_bytes: int) -> str:
    """Log `path` as an artifact, or, when it is larger than `max_bytes` (e.g. a 7B finetune's
    27 GB `trainable.safetensors`), a small `<name>.ref.json` naming its absolute path and size
    instead, so the weights are not stored twice. Returns the artifact name logged."""
    import json
    import tempfile

    size = path.stat().st_size
    if size <= max_bytes:
        client.log_artifact(run_id, str(path))
        return path.name
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / f"{path.name}.ref.json"
        ref.write_text(json.dumps({"path": str(path.resolve()), "bytes": size,
                                   "note": f"not copied: larger than tracking.artifact_max_mb={max_bytes / 2**20:g}"}, indent=1))
        client.log_artifact(run_id, str(ref))
    return ref.name


def ui_links(base: str, experiment_id: str, run_ids: list[str]) -> dict[str, str]:
    """Dashboard links: the experiment's runs, and MLflow's compare page for `run_ids` (their
    params and metrics side by side, e.g. every strategy x learning rate of a sweep)."""
    from urllib.parse import quote

    exp = json.dumps([str(experiment_id)], separators=(",", ":"))
    runs = json.dumps(list(run_ids), separators=(",", ":"))
    return {"experiment": f"{base}/#/experiments/{experiment_id}",
            "compare": f"{base}/#/compare-runs?runs={quote(runs)}&experiments={quote(exp)}"}


def serve_ui(uri: str, port: int = 5000, host: str = "127.0.0.1"):
    """Start `mlflow server` for this store on host:port (a subprocess; the caller waits or stops it)."""
    import subprocess
    import sys

    mlflow = Path(sys.executable).parent / "mlflow"
    return subprocess.Popen([str(mlflow), "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
                             "--workers", "1"], start_new_session=True)
