"""`Tracker`, mmln's MLflow client on one store (its writes in `runs`, its reads in `queries`), and
the experiments it creates (tagged for MLflow's training layout)."""
from __future__ import annotations

from typing import Optional

from mmln.base.progress import quiet_third_party
from mmln.tracking.queries import RunQueries
from mmln.tracking.runs import RunWrites
from mmln.tracking.store import RetryingClient, artifact_root, store_lock, tracking_uri
from mmln.tracking.tags import EXPERIMENT_TAGS


class Inactive:
    """The tracker of a distributed rank other than 0: every call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class Tracker(RunWrites, RunQueries, RetryingClient):
    """mmln's MLflow client on one store: MlflowClient's own calls (retried while a sqlite store is
    locked) plus the operations mmln needs, each written once."""

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
            return Inactive()  # type: ignore[return-value]
        tracker = cls.__new__(cls)
        tracker._client, tracker.uri = client, logger._tracking_uri
        return tracker

    # ------------------------------------------------------------------------------ experiments
    def experiment_id(self, name: str) -> str:
        """The experiment's id, created (once, under the store's lock) when missing."""
        with store_lock(self.uri):
            return get_or_create_experiment(self, name, self.uri)



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
