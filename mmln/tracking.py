"""MLflow, in one place: every MLflow call mmln makes goes through this module.

- `Tracker` (an MlflowClient retried while a sqlite store is locked) starts, continues and ends runs
  (status plus the error that ended them), logs metrics and params in batches, tags, artifacts (or
  a reference for large files), finds a sweep point's finished run by config hash, lists runs for
  the report and downloads their artifacts. Other modules get a Tracker and never import mlflow.
- `Tags` is the tag schema: every run tag mmln writes and reads back, with what it means.
- `SweepContext` is what a sweep tells the runs it starts (`mmln.fit.fit(..., sweep=...)`).
- `make_logger` is Lightning's MLFlowLogger for training metrics (its run status is set only by
  mmln.fit, once everything is written).

URI precedence: `tracking.uri` in the config, then $MLFLOW_TRACKING_URI, then `sqlite:///mlflow.db`
in the working directory. A relative sqlite path is made absolute (a relative one would create a
new database per working directory). Artifacts live beside the database in `mlartifacts/`, also
after the project folder is moved or copied (`relocate_artifacts`).
"""
from __future__ import annotations

import fcntl
import functools
import json
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from mmln.base.io import write_text
from mmln.base.progress import quiet_third_party

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


class Tags:
    """The tag schema: every run tag mmln writes (and sweep, halving, evaluate and report read back).

    Training runs (mmln.fit): MODEL, STRATEGY, STAGE, LR, DATA_SUBSET, CONFIG_FAMILY (the experiment),
    SWEEP_ID ("" outside a sweep), RUN_DIR (absolute), NOTE (the dashboard's description); a run that
    failed also ERROR ("<Exception>: <message>") and, for a non-finite loss, FAILED_STEP and
    FAILURE_REASON. Sweep points add CONFIG_HASH (`mmln.config.config_hash` of the point's resolved
    config), SWEEP_POINT (its index in the grid), VARIANT (--variant), PARENT (the sweep's parent run),
    SWEEPS (every sweep that reused the run), EVAL_ERROR (its evaluation failed), MOVED_TO (its run dir
    was moved aside for another config). Parents and other non-training runs have KIND: "sweep",
    "eval" (an evaluation that could not merge into its run: a child of it) or "report".
    Evaluations tag their run with `mmln.evaluate.eval_identity` (eval_limit, eval_benches, ...).
    Successive halving adds `halving/state`, `halving/rung`, `optuna/study`, `optuna/trial`
    (mmln.halving)."""

    MODEL, STRATEGY, STAGE, LR = "model", "strategy", "stage", "lr"
    DATA_SUBSET, CONFIG_FAMILY, SWEEP_ID, RUN_DIR = "data_subset", "config_family", "sweep_id", "run_dir"
    NOTE, ERROR, FAILED_STEP, FAILURE_REASON = "mlflow.note.content", "error", "failed_step", "failure_reason"
    CONFIG_HASH, SWEEP_POINT, VARIANT, PARENT = "config_hash", "sweep_point", "variant", "mlflow.parentRunId"
    SWEEPS, EVAL_ERROR, MOVED_TO, KIND = "sweeps", "eval_error", "moved_to", "kind"


@dataclass(frozen=True)
class SweepContext:
    """What a sweep tells a run it trains: its id (tag SWEEP_ID) and the tags the run carries from
    its creation on (CONFIG_HASH, SWEEP_POINT, PARENT, ...), so even a run killed in its first step
    is listed under its sweep. A continued run gets them again."""

    sweep_id: str
    tags: Mapping[str, str] = field(default_factory=dict)


def _error_text(error: BaseException | str) -> str:
    return (error if isinstance(error, str) else f"{type(error).__name__}: {error}")[:5000]


class _Inactive:
    """The tracker of a distributed rank other than 0: every call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class Tracker(RetryingClient):
    """mmln's MLflow client on one store: MlflowClient's own calls (retried while a sqlite store is
    locked) plus the operations mmln needs, each written once."""

    BATCH = 1000  # MLflow's limit of metrics per log_batch call
    PARAM_BATCH = 100  # and of params, and of tags

    def __init__(self, uri: Optional[str] = None):
        quiet_third_party()  # MMLN_QUIET=1: no MLflow INFO lines or download bars from any command
        from mlflow import MlflowClient

        self.uri = tracking_uri(uri)
        # MLflow creates and migrates a new sqlite store on first use, which races between processes
        # started at once (lost runs, a store that no longer opens): that first use happens here,
        # under the store's lock. The store is cached per URI, so later clients reuse it.
        with store_lock(self.uri):
            super().__init__(MlflowClient(self.uri))
            self.search_experiments(max_results=1)

    @classmethod
    def of_logger(cls, logger) -> "Tracker":
        """The Tracker of a Lightning MLFlowLogger's store and client (fit, callbacks). On a rank other
        than 0, where Lightning hands out a stand-in instead of the client, one that does nothing."""
        from mlflow import MlflowClient

        client = logger.experiment
        client = client._client if isinstance(client, RetryingClient) else client
        if not isinstance(client, MlflowClient):  # not rank 0 (rank 0 logs)
            return _Inactive()  # type: ignore[return-value]
        tracker = cls.__new__(cls)
        tracker._client, tracker.uri = client, logger._tracking_uri
        return tracker

    # ------------------------------------------------------------------------------ experiments
    def experiment_id(self, name: str) -> str:
        """The experiment's id, created (once, under the store's lock) when missing."""
        with store_lock(self.uri):
            return get_or_create_experiment(self, name, self.uri)

    def find_experiment(self, name: str):
        """The experiment called `name`, or None (never creates one)."""
        return self.get_experiment_by_name(name)

    def experiment_names(self) -> list[str]:
        return [e.name for e in self.search_experiments()]

    # ------------------------------------------------------------------------------------- runs
    def find_run(self, run_id: str):
        """The run, or None when the store has no such run."""
        from mlflow.exceptions import MlflowException

        try:
            return self.get_run(run_id)
        except MlflowException:
            return None

    def start_run(self, experiment_id: str, name: str, tags: Mapping[str, str],
                  params: Optional[Mapping[str, Any]] = None) -> str:
        run_id = self.create_run(experiment_id, run_name=name, tags=dict(tags)).info.run_id
        if params:
            self.log_params(run_id, params)
        return run_id

    def continue_run(self, run_id: str) -> None:
        """A paused or interrupted run is RUNNING again until it ends."""
        self.update_run(run_id, status="RUNNING")

    def end(self, run_id: str, status: str, error: BaseException | str | None = None,
            tags: Optional[Mapping[str, str]] = None) -> None:
        """Set the final status (FINISHED | FAILED | KILLED), with the error that ended the run."""
        extra = dict(tags or {}) | ({Tags.ERROR: _error_text(error)} if error is not None else {})
        if extra:
            self.set_tags(run_id, extra)
        self.set_terminated(run_id, status)

    def runs(self, experiment_ids: list[str], filter_string: str = "", order_by: Optional[list[str]] = None,
             limit: Optional[int] = None) -> list:
        """Every run matching `filter_string` (MLflow's search syntax), all pages, or the first `limit`."""
        out, token = [], None
        while True:
            page = self.search_runs(experiment_ids, filter_string, order_by=order_by or None,
                                    max_results=min(limit or 1000, 1000), page_token=token)
            out += list(page)
            token = page.token
            if not token or (limit is not None and len(out) >= limit):
                return out[:limit] if limit is not None else out

    def finished_run(self, experiment_id: str, config_hash: str):
        """The newest FINISHED run of this config (tag CONFIG_HASH), or None."""
        runs = self.runs([experiment_id], f"tags.{Tags.CONFIG_HASH} = '{config_hash}' and attributes.status = 'FINISHED'",
                         order_by=["attributes.start_time DESC"], limit=1)
        return runs[0] if runs else None

    def close_orphans(self, experiment_id: str, run_id: str, run_dir: str) -> list[str]:
        """Mark KILLED every other RUNNING run of this experiment with the same RUN_DIR (runs of the
        same run folder left behind by a killed process); returns their ids."""
        runs = self.runs([experiment_id], f"tags.`{Tags.RUN_DIR}` = '{run_dir}' and attributes.status = 'RUNNING'")
        orphans = [r.info.run_id for r in runs if r.info.run_id != run_id]
        for orphan in orphans:
            self.set_terminated(orphan, "KILLED")
        return orphans

    # ---------------------------------------------------------------------- metrics, params, tags
    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0,
                    timestamp_ms: Optional[int] = None) -> None:
        """One step's metrics, in as few database writes as MLflow allows."""
        now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        self.log_metric_rows(run_id, [(step, now, metrics)])

    def log_metric_rows(self, run_id: str, rows: list[tuple[int, int, Mapping[str, float]]]) -> None:
        """(step, timestamp ms, metrics) rows, e.g. a callback's buffered history: one log_batch per
        1000 values (non-finite values are skipped: MLflow stores them, plots cannot)."""
        from mlflow.entities import Metric
        values = [Metric(k, float(v), ts, step) for step, ts, m in rows for k, v in m.items() if math.isfinite(v)]
        for i in range(0, len(values), self.BATCH):
            self.log_batch(run_id, metrics=values[i:i + self.BATCH])

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), self.PARAM_BATCH):
            self.log_batch(run_id, params=items[i:i + self.PARAM_BATCH])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), self.PARAM_BATCH):
            self.log_batch(run_id, tags=items[i:i + self.PARAM_BATCH])

    def clear_failure(self, run_id: str) -> None:  # a resumed run that finished: the failed attempt's tags go
        for k in {Tags.ERROR, Tags.FAILED_STEP, Tags.FAILURE_REASON} & set(self.get_run(run_id).data.tags):
            self.delete_tag(run_id, k)

    # -------------------------------------------------------------------------------- artifacts
    def log_file_or_reference(self, run_id: str, path: Path, max_bytes: int) -> str:
        return log_file_or_reference(self, run_id, path, max_bytes)

    def download(self, run_id: str, path: str, dst: str | Path) -> Path:
        return Path(self.download_artifacts(run_id, path, str(dst)))

    def read_json(self, run_id: str, path: str) -> Optional[Any]:
        """A JSON artifact of the run (e.g. `eval/scores.json`), or None when it has none or it does
        not parse."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                return json.loads(self.download(run_id, path, tmp).read_text())
            except Exception:
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
    client = Tracker(uri)  # the store (created under its lock), then the experiment (under it too)
    client.experiment_id(experiment)
    logger = _logger_class()(experiment_name=experiment, run_name=run_name, tracking_uri=uri, tags=tags,
                             log_model=False, run_id=run_id)
    if run_id is not None:
        client.continue_run(run_id)
        logger.logged_through = {k: max((m.step for m in client.get_metric_history(run_id, k)), default=-1)
                                 for k in client.get_run(run_id).data.metrics}
    return logger


def log_file_or_reference(client, run_id: str, path: Path, max_bytes: int) -> str:
    """Log `path` as an artifact, or, when it is larger than `max_bytes` (e.g. a 7B finetune's
    27 GB `trainable.safetensors`), a small `<name>.ref.json` naming its absolute path and size
    instead, so the weights are not stored twice. Returns the artifact name logged."""
    size = path.stat().st_size
    if size <= max_bytes:
        client.log_artifact(run_id, str(path))
        return path.name
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / f"{path.name}.ref.json"
        write_text(ref, json.dumps({"path": str(path.resolve()), "bytes": size, "note": "not copied: larger than "
                                    f"tracking.artifact_max_mb={max_bytes / 2**20:g}"}, indent=1))
        client.log_artifact(run_id, str(ref))
    return ref.name


def ui_links(base: str, experiment_id: str, run_ids: list[str]) -> dict[str, str]:
    """Dashboard links: the experiment's runs, and MLflow's compare page for `run_ids` (their
    params and metrics side by side, e.g. every strategy x learning rate of a sweep)."""
    from urllib.parse import quote

    exp = json.dumps([str(experiment_id)], separators=(",", ":"))
    runs = json.dumps(list(run_ids), separators=(",", ":"))
    return {"experiment": f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning",
            "compare": f"{base}/#/compare-runs?runs={quote(runs)}&experiments={quote(exp)}"}


def serve_ui(uri: str, port: int = 5000, host: str = "127.0.0.1", log=None):
    """Start `mlflow server` for this store on host:port (a subprocess in its own process group; the caller
    waits or stops it): one worker, no job runner (its 7 huey workers serve GenAI jobs); output to `log`."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", uri, "--host",
                             host, "--port", str(port), "--workers", "1"], start_new_session=True, env=env, stdout=log, stderr=log)
