"""Successive halving's Optuna side: the options, one study per strategy and training seed on an RDB
storage (`load_study`: a GridSampler over the learning rates and the `--halving-rule` pruner:
`sync_pruner`, which applies `mmln.sweeps.rungs.sync_promoted`, or Optuna's
SuccessiveHalvingPruner), the grid's trials and the pruner's decisions at a rung (`decide_rung`)."""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mmln.config import ConfigError
from mmln.sweeps.rungs import RungIncomplete, sync_promoted

STATE, RUNG, PROXY = "halving/state", "halving/rung", "halving/proxy"
RULES = ("sync", "async")
VAL_LOSS = "val/loss"  # the proxy computed here, from `data.val`; every other proxy is an eval/* metric


@dataclass
class Options:
    eta: int = 3
    # eta 3, 11 lrs: rungs at 1/12, 1/4, 3/4 and 1 of the run for 11, 4, 2 and 1 points = 0.258 of the
    # full grid's steps (first rung 1/9: rungs 1/9, 1/3, 1 for 11, 4, 2 points = 0.313)
    first_rung: float = 1 / 12
    proxy_metric: str = "eval/flickr30k_cider"
    proxy_bench: str = "flickr30k"
    proxy_overrides: list[str] = field(default_factory=lambda: ["eval.limit=100"])
    storage: Optional[str] = field(default=None, repr=False)
    rule: str = "sync"
    heartbeat: float = field(default=30.0, repr=False)  # seconds between a worker's heartbeats
    heartbeat_timeout: float = field(default=300.0, repr=False)  # a claim unbeaten this long is dead

    @property
    def bench(self) -> Optional[str]:
        """The benchmark the proxy needs (None for val/loss)."""
        return None if self.proxy_metric == VAL_LOSS else self.proxy_bench

    @property
    def direction(self) -> str:
        from mmln.eval.selection import higher_is_better

        return "maximize" if higher_is_better(self.proxy_metric) else "minimize"

    def check(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"--halving-rule {self.rule}: one of {', '.join(RULES)}")
        if self.eta < 2:
            raise ConfigError(f"--eta {self.eta}: successive halving needs a reduction factor >= 2")
        if not 0 < self.first_rung < 1:
            raise ConfigError(f"--first-rung {self.first_rung}: a fraction of the run in (0, 1), e.g. 1/12")
        if self.proxy_metric != VAL_LOSS and not self.proxy_metric.startswith(f"eval/{self.proxy_bench}"):
            raise ConfigError(f"--proxy-metric {self.proxy_metric} comes not from --proxy-bench {self.proxy_bench}")
        for o in self.proxy_overrides:
            if "=" not in o:
                raise ConfigError(f"--proxy-overrides {o!r}: expected key=value")


def default_storage(uri: str, out_dir: Path) -> str:
    """The journal file `optuna.journal` in the experiment's output folder (shared by every worker
    that shares that folder); a sweep begun before journals were the default keeps its `optuna.db`
    beside a sqlite MLflow store."""
    from mmln.tracking import SQLITE

    old = Path(uri[len(SQLITE):]).parent / "optuna.db" if uri.startswith(SQLITE) else None
    if old is not None and old.is_file():
        return f"sqlite:///{old.resolve()}"
    out_dir.mkdir(parents=True, exist_ok=True)
    return str((out_dir / "optuna.journal").resolve())


@functools.lru_cache(maxsize=None)
def storage_of(spec: Optional[str]):
    """The Optuna storage `--study-storage` names: an RDB URL (`postgresql://...`, `sqlite:///...`)
    or a journal file's path (`optuna.storages.JournalStorage` over a `JournalFileBackend`, whose
    lock works on a shared file system); None: in memory. One object per process."""
    if spec is None:
        return None
    optuna = quiet_optuna()
    if "://" in spec:
        return rdb_storage(optuna, spec)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(spec))


def rdb_storage(optuna, spec: str, attempts: int = 10):
    """Optuna's RDB storage at `spec`. In a new database each worker creates the schema, and workers
    started at once collide there (a table, PostgreSQL enum type or schema-version row another one
    created a moment before: 5 of 6 processes failed on sqlite): such a worker tries again, and
    finds the schema made."""
    import random

    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.storages.get_storage(spec)
        except (IntegrityError, OperationalError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 + 0.5 * random.random())


def study_groups(points: list) -> dict[str, list]:
    """One study per strategy and training seed: successive halving compares learning rates."""
    groups: dict[str, list] = {}
    for p in points:
        groups.setdefault(f"{p.strategy}-seed{p.cfg.train.seed}", []).append(p)
    return groups


def quiet_optuna():
    """Optuna, its INFO logging (a line per trial) turned down to warnings."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def grid_sampler(lrs: list[float]):
    import optuna

    class Grid(optuna.samplers.GridSampler):
        """GridSampler without its `study.stop()` once the grid is used up: that only works inside
        `study.optimize`, and this study is driven with ask / report / tell."""

        def after_trial(self, study, trial, state, values) -> None:
            pass

    return Grid({"lr": lrs}, seed=0)


def load_study(name: str, storage: str, lrs: list[float], opts: Options, min_resource: Optional[int] = None):
    """The study `name` (created on first use): GridSampler over `lrs`, the `opts.rule` pruner. The
    async pruner needs the first rung's step (`min_resource`; none yet: no pruner); the sync one
    reads the rung ends from the study's user attribute `rung_steps`."""
    optuna = quiet_optuna()
    if opts.rule == "sync":
        pruner = sync_pruner(lrs, opts.eta)
    else:
        pruner = (optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=opts.eta)
                  if min_resource else optuna.pruners.NopPruner())
    return optuna.create_study(study_name=name, storage=storage_of(storage), load_if_exists=True, direction=opts.direction,
                               sampler=grid_sampler(lrs), pruner=pruner)


def sync_pruner(lrs: list[float], eta: int):
    import optuna

    class SyncHalving(optuna.pruners.BasePruner):
        """Successive halving with synchronous rungs (`sync_promoted`): a trial that reported a rung's
        last step is pruned unless it is among the rung's best ceil(n / eta). Asked before every
        trial of the rung has reported, it raises RungIncomplete rather than guess."""

        def prune(self, study, trial) -> bool:
            steps = study.user_attrs.get("rung_steps")
            step = trial.last_step
            if not steps or step not in steps[:-1]:
                return False  # not a rung's end (or no rung yet): nothing to decide
            maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
            kept = sync_promoted(study.get_trials(deepcopy=False), lrs, steps, steps.index(step), eta, maximize)
            return trial.number not in kept

    return SyncHalving()


def grid_trials(study, lrs: list[float], ask: bool = True) -> dict[float, int]:
    """lr -> trial number (the lowest-numbered usable trial of each lr), asking GridSampler for the
    grid points that have no trial yet (`ask=False`: only those the study holds)."""
    optuna = quiet_optuna()
    by_lr: dict[float, int] = {}
    for t in study.get_trials(deepcopy=False):
        if "lr" not in t.params and t.state == optuna.trial.TrialState.RUNNING and ask:  # killed between ask and suggest
            optuna.trial.Trial(study, t._trial_id).suggest_categorical("lr", lrs)
            t = study._storage.get_trial(t._trial_id)
        if "lr" in t.params and t.state != optuna.trial.TrialState.FAIL:
            by_lr.setdefault(t.params["lr"], t.number)
    while ask and len(by_lr) < len(lrs):
        trial = study.ask()
        by_lr.setdefault(trial.suggest_categorical("lr", lrs), trial.number)
    return by_lr


def decide_rung(study, numbers: list[int], step: int, rung: int) -> dict[int, bool]:
    """The study's pruner decides, in trial order, for the trials of `numbers` that reported `step`
    and have no decision at this rung yet: {trial number: pruned}; {} while the sync rule's rung is
    incomplete. A pruned trial is told PRUNED; the decision is kept in the trial's user attribute
    `rung<k>` (promoted | pruned)."""
    optuna = quiet_optuna()
    TS = optuna.trial.TrialState
    out = {}
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for n in sorted(numbers):
        t = trials[n]
        if t.state != TS.RUNNING or step not in t.intermediate_values or f"rung{rung}" in t.user_attrs:
            continue
        trial = optuna.trial.Trial(study, t._trial_id)
        try:
            out[n] = trial.should_prune()
        except RungIncomplete:  # the sync rule waits for every trial of the rung (a re-run trains the missing)
            return out
        trial.set_user_attr(f"rung{rung}", "pruned" if out[n] else "promoted")
        if out[n]:
            study.tell(n, state=TS.PRUNED)
    return out


def study_min_resource(storage: str, name: str) -> Optional[int]:
    """The first rung's step, once a run has told the study its length."""
    optuna = quiet_optuna()
    try:
        steps = optuna.load_study(study_name=name, storage=storage_of(storage)).user_attrs.get("rung_steps")
    except KeyError:  # no such study yet
        return None
    return steps[0] if steps else None


def existing_study(name: str, storage: str, lrs: list[float], opts: Options):
    """The study `name` when an earlier sweep created it, else None."""
    if name not in quiet_optuna().get_all_study_names(storage_of(storage)):
        return None
    return load_study(name, storage, lrs, opts, study_min_resource(storage, name))
