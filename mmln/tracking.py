"""MLflow: one embedded sqlite store by default, absolute paths, small artifacts only.

URI precedence: `tracking.uri` in the config, then $MLFLOW_TRACKING_URI, then `sqlite:///mlflow.db`
in the working directory. A relative sqlite path is made absolute (a relative one would create a
new database per working directory). Artifacts live beside the database in `mlartifacts/`.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
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


def _logger_class():
    from lightning.pytorch.loggers import MLFlowLogger

    class RunLogger(MLFlowLogger):
        """MLFlowLogger whose run status only mmln.fit sets (`end`): Lightning calls `finalize("success")`
        when `trainer.fit` returns, before the final artifacts are written, so a failed export would
        otherwise leave a FINISHED run. On resume, steps already logged are not logged again."""

        logged_through: dict[str, int] = {}

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
        client = MlflowClient(uri)
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

