"""Successive halving's old import path: the code lives in `mmln.sweeps` (`rungs`: the pure rung
rule, `study`: the Optuna study and pruners, `halving`: the search, `proxy`: the cheap score)."""
from __future__ import annotations

from mmln.sweeps.halving import log_budget
from mmln.sweeps.workers import run_halving
from mmln.sweeps.proxy import proxy, val_loss
from mmln.sweeps.rungs import RungIncomplete, fraction, rung_steps, survivors, sync_promoted
from mmln.sweeps.study import (PROXY, RULES, RUNG, STATE, VAL_LOSS, Options, decide_rung, default_storage, grid_trials,
                               load_study, study_groups, study_min_resource)

__all__ = ["PROXY", "RULES", "RUNG", "STATE", "VAL_LOSS", "Options", "RungIncomplete", "decide_rung",
           "default_storage", "fraction", "grid_trials", "load_study", "log_budget", "proxy", "run_halving",
           "rung_steps", "study_groups", "study_min_resource", "survivors", "sync_promoted", "val_loss"]
