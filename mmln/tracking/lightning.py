"""Lightning's MLFlowLogger as mmln's runs use it: its calls retried, its run ended only by mmln.fit."""
from __future__ import annotations

from typing import Optional

from mmln.tracking.client import Tracker
from mmln.tracking.store import RetryingClient


def logger_class():
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
    logger = logger_class()(experiment_name=experiment, run_name=run_name, tracking_uri=uri, tags=tags,
                             log_model=False, run_id=run_id)
    if run_id is not None:
        client.continue_run(run_id)
        logger.logged_through = {k: max((m.step for m in client.get_metric_history(run_id, k)), default=-1)
                                 for k in client.get_run(run_id).data.metrics}
    return logger
