"""MLflow: one embedded sqlite store by default, absolute paths, small artifacts only.

URI precedence: `tracking.uri` in the config, then $MLFLOW_TRACKING_URI, then `sqlite:///mlflow.db`
in the working directory. A relative sqlite path is made absolute (a relative one would create a
new database per working directory). Artifacts live beside the database in `mlartifacts/`, also
after the project folder is moved or copied (`relocate_artifacts`).
"""
from __future__ import annotations

import fcntl
import functools
import json
import os
import sys
import time
from contextlib import contextmanager
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


class TrackingUnreachable(RuntimeError):
    """The tracking server does not answer."""


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """An http(s) tracking URI must answer MLflow's /health within `timeout` seconds (MLflow itself
    retries for minutes before failing); other URIs (sqlite, file) are local."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered (a proxy in front of the server may not route /health)
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingUnreachable(
            f"tracking URI {uri} is not reachable ({reason}): start the MLflow server, fix tracking.uri / "
            "$MLFLOW_TRACKING_URI, or set tracking.offline=true to log into a local store to sync later") from None


def offline_uri(output_dir: str | Path) -> str:
    """The local store an offline run logs to (`tracking.offline=true` with an unreachable server)."""
    return tracking_uri(f"{SQLITE}{Path(output_dir) / 'mlflow-offline.db'}")


@contextmanager
def store_lock(uri: str):
    """An exclusive file lock beside a sqlite store (`<db>.lock`); nothing for other URIs."""
    if not uri.startswith(SQLITE):
        yield
        return
    db = Path(uri[len(SQLITE):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


LOCK_RETRIES = 6  # after MLflow's own 20 s sqlite busy wait: backoff 1, 2, 4, 8, 16, 30 s (about 3 minutes in all)


def _locked(e: BaseException) -> bool:
    """sqlite's "database is locked" (SQLITE_BUSY), raw or as MLflow wraps it."""
    while e is not None:
        if "database is locked" in str(e) or "database table is locked" in str(e):
            return True
        e = e.__cause__
    return False


class RetryingClient:
    """An MlflowClient whose every call is retried with backoff while a sqlite store is locked.

    MLflow waits 20 s for a sqlite lock (`PRAGMA busy_timeout`), then fails the call: a run's metrics
    or its final status would be lost while other processes (concurrent runs of a sweep, a SLURM
    array, a long `mlflow gc`) hold the database. Each failed call rolls back, so retrying it is safe."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "_client":  # copy/pickle probing a half-built instance
            raise AttributeError(name)
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            for attempt in range(LOCK_RETRIES + 1):
                try:
                    return attr(*args, **kwargs)
                except Exception as e:
                    if attempt == LOCK_RETRIES or not _locked(e):
                        raise
                    wait = min(2.0 ** attempt, 30.0)
                    print(f"warning: MLflow store locked during {name}; retry {attempt + 1}/{LOCK_RETRIES} in "
                          f"{wait:g} s", file=sys.stderr)
                    time.sleep(wait)

        return call


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


def _logger_class():
    from lightning.pytorch.loggers import MLFlowLogger

    class RunLogger(MLFlowLogger):
        """MLFlowLogger whose run status only mmln.fit sets (`end`): Lightning calls `finalize("success")`
        when `trainer.fit` returns, before the final artifacts are written, so a failed export would
        otherwise leave a FINISHED run. On resume, steps already logged are not logged again."""

        logged_through: dict[str, int] = {}

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._mlflow_client = RetryingClient(self._mlflow_client)  # every MLflow call a run makes

        def finalize(self, status: str = "success") -> None:
            pass

        def end(self, status: str) -> None:
            MLFlowLogger.finalize(self, status)

        def log_metrics(self, metrics, step=None) -> None:
            if step is not None and self.logged_through:
                metrics = {k: v for k, v in metrics.items() if step > self.logged_through.get(k, -1)}
            if metrics:
                super().log_metrics(metrics, step)

    return RunLogger


def make_logger(experiment: str, run_name: str, uri: str, tags: dict[str, str], run_id: Optional[str] = None):
    """Lightning's MLFlowLogger on an experiment we create (so its artifact location is ours); the run
    ends only with `logger.end(status)`. A continued run (`run_id`) skips steps it already logged."""
    from mlflow import MlflowClient

    # MLflow creates and migrates a new sqlite store on first use, which races between processes
    # started at once (lost runs, a store that no longer opens): do that, and the experiment, once
    # under a lock. The store object is cached per URI, so later clients in this process reuse it.
    with store_lock(uri):
        client = RetryingClient(MlflowClient(uri))
        get_or_create_experiment(client, experiment, uri)
    logger = _logger_class()(experiment_name=experiment, run_name=run_name, tracking_uri=uri, tags=tags,
                             log_model=False, run_id=run_id)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")  # a continued run is running again until it ends
        logger.logged_through = {k: max((m.step for m in client.get_metric_history(run_id, k)), default=-1)
                                 for k in client.get_run(run_id).data.metrics}
    return logger


def close_orphans(logger, tag: str, value: str) -> list[str]:
    """Mark KILLED every other RUNNING run of this experiment whose tag `tag` is `value` (runs of the
    same run folder left behind by a killed process); returns their ids."""
    client = logger.experiment
    runs = client.search_runs([logger.experiment_id],
                              f"tags.`{tag}` = '{value}' and attributes.status = 'RUNNING'", max_results=1000)
    orphans = [r.info.run_id for r in runs if r.info.run_id != logger.run_id]
    for run_id in orphans:
        client.set_terminated(run_id, "KILLED")
    return orphans


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
