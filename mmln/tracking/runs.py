"""What a Tracker writes on a run: its start, continuation and end (status plus the error that ended
it), metrics, params and tags in MLflow's batch sizes, and artifacts (or a reference for large files)."""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from mmln.base.io import write_text
from mmln.tracking.tags import Tags


def error_text(error: BaseException | str) -> str:
    """The ERROR tag's value: "<Exception>: <message>", at most 5000 characters."""
    return (error if isinstance(error, str) else f"{type(error).__name__}: {error}")[:5000]


class RunWrites:
    """Tracker's writes (a mixin over MlflowClient's calls, which `RetryingClient` supplies)."""

    BATCH = 1000  # MLflow's limit of metrics per log_batch call
    PARAM_BATCH = 100  # and of params, and of tags

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
        extra = dict(tags or {}) | ({Tags.ERROR: error_text(error)} if error is not None else {})
        if extra:
            self.set_tags(run_id, extra)
        self.set_terminated(run_id, status)

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

