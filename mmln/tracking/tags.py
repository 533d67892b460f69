"""The tag schema: what mmln writes on runs and experiments, and what a sweep tells its runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

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


# MLflow 3's UI opens an experiment without this tag in its GenAI layout (runs labelled "Evaluations")
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
