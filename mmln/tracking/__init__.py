"""MLflow, in one place: every MLflow call mmln makes goes through this package.

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

Modules, by concern: `store` (URI, lock, retries), `tags` (the schema), `runs` and `queries` (what
a Tracker writes and reads), `client` (Tracker, experiments), `lightning` (the training logger),
`views` (the dashboard server and links). Every name is importable from `mmln.tracking`.
"""
from __future__ import annotations

from mmln.tracking.client import Tracker, get_or_create_experiment
from mmln.tracking.lightning import make_logger
from mmln.tracking.runs import log_file_or_reference
from mmln.tracking.store import (LOCK_RETRIES, SQLITE, RetryingClient, TrackingUnreachable, artifact_root,
                                 check_reachable, offline_uri, relocate_artifacts, store_lock, tracking_uri)
from mmln.tracking.tags import EXPERIMENT_TAGS, SweepContext, Tags
from mmln.tracking.views import serve_ui, ui_base, ui_links

__all__ = ["EXPERIMENT_TAGS", "LOCK_RETRIES", "SQLITE", "RetryingClient", "SweepContext", "Tags", "Tracker",
           "TrackingUnreachable", "artifact_root", "check_reachable", "get_or_create_experiment",
           "log_file_or_reference", "make_logger", "offline_uri", "relocate_artifacts", "serve_ui", "store_lock",
           "tracking_uri", "ui_base", "ui_links"]
