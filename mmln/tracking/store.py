"""The store: its URI (made absolute, artifacts beside a sqlite database, also after the project is
moved: `relocate_artifacts`), whether a server answers, the lock beside a sqlite store, and
`RetryingClient`, an MlflowClient whose calls are retried while sqlite is locked."""
from __future__ import annotations

import fcntl
import functools
import os
import sqlite3
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
