"""Successive halving over a sweep's learning-rate grid (`python -m mmln.sweep --search halving`).

Optuna holds the study and makes the pruning decisions: one study per strategy (and training seed),
a `GridSampler` over the grid's learning rates and a pruner, on an RDB storage: by default the
sqlite file `optuna.db` beside the MLflow database, or any SQLAlchemy URL
(`--study-storage postgresql://...`) so that a study outlives the process that drives it.

Rung k ends at step `r0 * eta**k` (r0 = round(first_rung * total), at least 1); the last rung is the
full run. Every grid point trains to the end of rung 0 and pauses there (`fit(stop_at=...)`: the
Trainer stops, `checkpoints/last.ckpt` holds the exact state; the warmup + cosine schedule is the
full run's), is scored with a cheap proxy (`--proxy-metric` of `--proxy-bench`, evaluated from that
checkpoint with `--proxy-overrides`, by default `eval.limit=100`: the first 100 test items, the same
fixed subset every time), and reports it to its trial (an intermediate value at the rung's last
step). Then the pruner decides, for each trial of the rung:

- `--halving-rule sync` (default; `SyncHalving`, an `optuna.pruners.BasePruner`): once *every*
  trial of the rung has reported, the best ceil(n / eta) of its n trials are promoted, a tie going
  to the higher learning rate (the tie rule of `mmln.selection.best_lr`), NaN ranking last; asked
  earlier it refuses (`RungIncomplete`). 11 points, eta 3: 4, then 2, then 1 reach the end.
- `--halving-rule async` (Optuna's `SuccessiveHalvingPruner`): in trial order, a trial is promoted
  when its proxy is in the top 1/eta of the trials that reached the rung *before* it (the first
  ones must only beat fewer than eta others), so more points survive.

A pruned trial's state is PRUNED and its MLflow run KILLED. A promoted run *continues* from its
checkpoint to the next rung, so a survivor that reaches the end is bit-identical to the same point
of the full grid, and gets the sweep's full evaluation (`--bench`); its trial is told the selection
metric.

Restartable: a rung already reported (the trial's intermediate value) is not trained or scored
again; a point killed mid-rung continues from its last checkpoint (mmln's exact resume). Every
point is an MLflow child run of the sweep, with tags `halving/state` (paused | promoted | pruned |
finished), `halving/rung`, `optuna/study`, `optuna/trial`, and the metric `halving/proxy` (step =
the rung's last optimizer step). The parent run records `halving/steps_spent`,
`halving/steps_full_grid` and `halving/budget_fraction`.

The sync rule is a pure function of the stored intermediate values (`sync_promoted`), so a
restarted process, or another one on the same storage, reaches the same decisions. A point that
fails before reporting leaves its rung undecided (the sweep exits 1); a re-run trains it and
decides the rung. The study is driven by one process (points run sequentially, as in the grid
sweep).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from mmln.config import ConfigError

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

    @property
    def bench(self) -> Optional[str]:
        """The benchmark the proxy needs (None for val/loss)."""
        return None if self.proxy_metric == VAL_LOSS else self.proxy_bench

    @property
    def direction(self) -> str:
        return "minimize" if "loss" in self.proxy_metric.rsplit("/", 1)[-1] else "maximize"

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


def fraction(text: str) -> float:
    """'1/9' or '0.111' -> a float (argparse type)."""
    return float(Fraction(text))


def rung_steps(total: int, first_rung: float, eta: int) -> list[int]:
    """The optimizer step at which each rung ends; the last is the full run."""
    r0 = max(1, round(first_rung * total))
    steps, s = [], r0
    while s < total:
        steps.append(s)
        s *= eta
    return steps + [total]


def default_storage(uri: str, out_dir: Path) -> str:
    """`optuna.db` beside a sqlite MLflow store, else in the experiment's output folder."""
    from mmln.tracking import SQLITE

    folder = Path(uri[len(SQLITE):]).parent if uri.startswith(SQLITE) else out_dir
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


def study_groups(points: list) -> dict[str, list]:
    """One study per strategy and training seed: successive halving compares learning rates."""
    groups: dict[str, list] = {}
    for p in points:
        groups.setdefault(f"{p.strategy}-seed{p.cfg.train.seed}", []).append(p)
    return groups


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _grid_sampler(lrs: list[float]):
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
    optuna = _optuna()
    if opts.rule == "sync":
        pruner = _sync_pruner(lrs, opts.eta)
    else:
        pruner = (optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=opts.eta)
                  if min_resource else optuna.pruners.NopPruner())
    return optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction=opts.direction,
                               sampler=_grid_sampler(lrs), pruner=pruner)


class RungIncomplete(RuntimeError):
    """The synchronous rule was asked to decide a rung that some of its trials have not reported."""


def sync_promoted(trials: list, lrs: list[float], steps: list[int], rung: int, eta: int, maximize: bool) -> set[int]:
    """The synchronous rule: the trial numbers promoted at `rung` (whose proxy is reported at step
    `steps[rung]`). Rung 0's trials: one per grid lr, the lowest-numbered trial that reported rung 0
    (a trial that finished or failed without reporting it, e.g. a point the full grid had already
    trained, takes no part). Rung k's trials: those promoted at rung k-1. Once every trial of the
    rung has reported, the best ceil(n / eta) of its n trials go on: ranked by the proxy (`maximize`
    or not; NaN is the worst), a tie going to the higher lr (as `mmln.selection.best_lr` breaks
    ties). A pure function of the stored intermediate values, so a restarted or second process
    reaches the same decisions. Raises RungIncomplete while some trial of the rung has not reported."""
    by_lr: dict[float, list] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.params.get("lr") in lrs:
            by_lr.setdefault(t.params["lr"], []).append(t)
    members = []
    for lr in lrs:
        ts = by_lr.get(lr, [])
        reported = [t for t in ts if steps[0] in t.intermediate_values]
        if reported:
            members.append(reported[0])
        elif not ts or any(not t.state.is_finished() for t in ts):
            raise RungIncomplete(f"rung 0: lr {lr:g} has not reported step {steps[0]}")
    for k in range(rung + 1):
        missing = [t.number for t in members if steps[k] not in t.intermediate_values]
        if missing:
            raise RungIncomplete(f"rung {k}: trials {missing} have not reported step {steps[k]}")

        def rank(t, step=steps[k]):
            v = float(t.intermediate_values[step])
            return (not math.isnan(v), (v if maximize else -v) if not math.isnan(v) else 0.0, t.params["lr"])

        members = sorted(members, key=rank, reverse=True)[: math.ceil(len(members) / eta)]
    return {t.number for t in members}


def _sync_pruner(lrs: list[float], eta: int):
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
    optuna = _optuna()
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


def run_halving(points: list, client, exp_id: str, parent_id: Optional[str], sweep_id: str, benches: list[str],
                metric: str, config_path: str, opts: Options, storage: str, say, train: bool = True) -> dict[str, Any]:
    """Run every study to its end (`train=False`, `--summarize`: only `settle` what the stores hold);
    set each point's status (`pruned` for the pruned); the budget spent."""
    TS = _optuna().trial.TrialState
    spent = full = 0
    for group, pts in study_groups(points).items():
        name, lrs = f"mmln-{sweep_id}-{group}", [p.lr for p in pts]
        if train:
            study = halve(name, pts, client, exp_id, parent_id, sweep_id, benches, metric, config_path, opts,
                          storage, say)
        elif (study := existing_study(name, storage, lrs, opts)) is not None:
            settle(study, trial_points(study, pts, ask=False), client, say)
        else:
            continue
        steps = study.user_attrs.get("rung_steps") or [0]
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        for n, p in trial_points(study, pts, ask=False).items():
            p.status = "pruned" if trials[n].state == TS.PRUNED else p.status
            spent += steps[-1] if trials[n].state == TS.COMPLETE else max(trials[n].intermediate_values, default=0)
        full += steps[-1] * len(pts)
    return {"halving/steps_spent": spent, "halving/steps_full_grid": full,
            "halving/budget_fraction": spent / full if full else float("nan")}


def trial_points(study, pts: list, ask: bool = True) -> dict[int, Any]:
    """trial number -> its grid point; each point's MLflow run read from its run folder (what fit
    resumes into), so a restarted process knows the runs of the points it does not train again."""
    lrs = [p.lr for p in pts]
    out = {n: next(p for p in pts if p.lr == lr) for lr, n in grid_trials(study, lrs, ask).items()}
    for p in out.values():
        id_file = p.run_dir / "mlflow_run_id"
        p.run_id = p.run_id or (id_file.read_text().strip() if id_file.is_file() else None)
    return out


def alive_at(study, point_of: dict[int, Any], rung: int) -> list[int]:
    """The trials that run rung `rung`: still RUNNING, promoted at every rung before."""
    TS = _optuna().trial.TrialState
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    return [n for n in sorted(point_of) if trials[n].state == TS.RUNNING
            and all(trials[n].user_attrs.get(f"rung{j}") == "promoted" for j in range(rung))]


def halve(name: str, pts: list, client, exp_id: str, parent_id: Optional[str], sweep_id: str, benches: list[str],
          metric: str, config_path: str, opts: Options, storage: str, say):
    """One study: every grid point through the rungs, Optuna pruning between them. Nothing is
    assumed from an earlier process: each rung's members, reports and decisions are read from the
    study, and what a kill left half written is completed first (`settle`). Returns the study."""
    lrs = [p.lr for p in pts]
    study = load_study(name, storage, lrs, opts, study_min_resource(storage, name))
    point_of = trial_points(study, pts)
    settle(study, point_of, client, say)
    rung = 0
    while True:
        steps = study.user_attrs.get("rung_steps")
        alive = alive_at(study, point_of, rung)
        if not alive or (steps is not None and rung >= len(steps)):
            return study
        for n in alive:  # every live trial reaches the end of this rung (the last rung: the end of the run)
            advance(study, n, point_of[n], rung, client, exp_id, parent_id, sweep_id, benches, metric, config_path,
                    opts, say)
        if steps is None and (steps := study.user_attrs.get("rung_steps")):  # the first run told the rungs
            study = load_study(name, storage, lrs, opts, steps[0])  # the async pruner needs the first rung
        if steps is None or rung >= len(steps) - 1:
            return study
        settle(study, point_of, client, say)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        waiting = [n for n in alive if f"rung{rung}" not in trials[n].user_attrs]
        if waiting:  # a point failed before reporting: the rung stays open for a re-run
            say(f"{name}: rung {rung} undecided, {len(waiting)} of {len(alive)} points without a decision "
                "(failed ones are listed); run the sweep again to finish them")
            return study
        rung += 1


def advance(study, n: int, p, rung: int, client, exp_id: str, parent_id: Optional[str], sweep_id: str,
            benches: list[str], metric: str, config_path: str, opts: Options, say) -> None:
    """Trial `n` (point `p`) to the end of `rung` and scored there (the proxy reported to the trial,
    then logged to MLflow), or, at the last rung, to the end of the run and told its metric. The
    first run to reach its rung end tells the study the rung steps."""
    from mmln.sweep import point_lock

    steps = study.user_attrs.get("rung_steps")
    t = next(t for t in study.get_trials(deepcopy=False) if t.number == n)
    if steps is not None and rung < len(steps) - 1 and steps[rung] in t.intermediate_values:
        return  # scored before (an earlier process)
    with point_lock(p):  # another sweep training this point: wait for it (then it is done, or paused)
        train_and_score(study, t, p, rung, client, exp_id, parent_id, sweep_id, benches, metric, config_path,
                        opts, say)


def train_and_score(study, t, p, rung: int, client, exp_id: str, parent_id: Optional[str], sweep_id: str,
                    benches: list[str], metric: str, config_path: str, opts: Options, say) -> None:
    """`advance`'s work, under the point's lock."""
    from mmln.sweep import run_point

    optuna = _optuna()
    TS = optuna.trial.TrialState
    n, steps = t.number, study.user_attrs.get("rung_steps")
    last = steps is not None and rung == len(steps) - 1
    say(f"[{p.index}] {p.name}: halving rung {rung}" + (" (the full run)" if last else ""))
    seen: list[int] = []

    def stop(total: int) -> int:
        seen.append(total)
        ends = rung_steps(total, opts.first_rung, opts.eta)
        return ends[min(rung, len(ends) - 1)]

    tags = {"optuna/study": study.study_name, "optuna/trial": str(n), RUNG: str(rung),
            STATE: "finished" if last else "paused"}
    try:
        run_point(p, client, exp_id, parent_id, sweep_id, benches, metric, config_path, stop_at=stop, extra_tags=tags)
    except Exception as e:  # the trial stays RUNNING: a re-run retries it
        p.status, p.error = "failed", f"{type(e).__name__}: {e}"
        say(f"[{p.index}] {p.name}: FAILED: {p.error}")
        return
    if steps is None and seen:
        steps = rung_steps(seen[0], opts.first_rung, opts.eta)
        study.set_user_attr("rung_steps", steps)
    if p.status != "paused":  # finished: the full run (last rung, or done before, e.g. by the full grid)
        value = client.get_run(p.run_id).data.metrics.get(metric)
        ok = value is not None and not math.isnan(value)
        study.tell(n, value if ok else None, state=TS.COMPLETE if ok else TS.FAIL)
        client.set_tag(p.run_id, STATE, "finished")
        return
    value = proxy(p, opts, rung)
    optuna.trial.Trial(study, t._trial_id).report(value, steps[rung])
    client.log_metric(p.run_id, PROXY, value, step=steps[rung])


def settle(study, point_of: dict[int, Any], client, say) -> None:
    """Bring the stores in line with what the study holds, whatever moment a kill interrupted: a
    trial whose decision says pruned is PRUNED; every rung whose live trials have all reported is
    decided (`decide_rung`: the decisions the killed process would have made, from the stored
    proxies); each point's run carries the `halving/state` its trial implies (`run_state`) and every
    reported proxy as its `halving/proxy` metric."""
    TS = _optuna().trial.TrialState
    steps = study.user_attrs.get("rung_steps")
    if not steps:
        return
    for t in study.get_trials(deepcopy=False):  # killed between a trial's decision and its PRUNED state
        if t.number in point_of and t.state == TS.RUNNING and "pruned" in t.user_attrs.values():
            study.tell(t.number, state=TS.PRUNED)
    for k in range(len(steps) - 1):
        alive = alive_at(study, point_of, k)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        if not all(steps[k] in trials[n].intermediate_values for n in alive):
            break  # rung k still being scored: decided once every live trial has reported
        for n, pruned in decide_rung(study, alive, steps[k], k).items():
            p, value = point_of[n], trials[n].intermediate_values[steps[k]]
            say(f"[{p.index}] {p.name}: proxy {value:.6g} at step {steps[k]}: "
                + ("pruned" if pruned else f"promoted to rung {k + 1}"))
    for t in study.get_trials(deepcopy=False):
        p = point_of.get(t.number)
        if p is not None and p.run_id and (t.intermediate_values or t.state.is_finished()):
            sync_run(client, p.run_id, run_state(t, steps), t.intermediate_values)


def run_state(t, steps: list[int]) -> str:
    """The `halving/state` trial `t` implies: pruned; finished (told its final metric); promoted
    (decided at a rung, not yet scored at the next); else paused."""
    TS = _optuna().trial.TrialState
    if t.state == TS.PRUNED:
        return "pruned"
    if t.state.is_finished():
        return "finished"
    decided = [k for k in range(len(steps) - 1) if t.user_attrs.get(f"rung{k}") == "promoted"]
    nxt = decided[-1] + 1 if decided else None
    if nxt is not None and (nxt == len(steps) - 1 or steps[nxt] not in t.intermediate_values):
        return "promoted"
    return "paused"


def sync_run(client, run_id: str, state: str, proxies: dict[int, float]) -> None:
    """The run's `halving/state` tag and `halving/proxy` history as its trial holds them (a kill
    between the study's write and MLflow's left them behind)."""
    if client.get_run(run_id).data.tags.get(STATE) != state:
        client.set_tag(run_id, STATE, state)
    logged = {m.step for m in client.get_metric_history(run_id, PROXY)}
    for step, value in sorted(proxies.items()):
        if step not in logged:
            client.log_metric(run_id, PROXY, value, step=step)


def existing_study(name: str, storage: str, lrs: list[float], opts: Options):
    """The study `name` when an earlier sweep created it, else None."""
    if name not in _optuna().get_all_study_names(storage):
        return None
    return load_study(name, storage, lrs, opts, study_min_resource(storage, name))


def decide_rung(study, numbers: list[int], step: int, rung: int) -> dict[int, bool]:
    """The study's pruner decides, in trial order, for the trials of `numbers` that reported `step`
    and have no decision at this rung yet: {trial number: pruned}; {} while the sync rule's rung is
    incomplete. A pruned trial is told PRUNED; the decision is kept in the trial's user attribute
    `rung<k>` (promoted | pruned)."""
    optuna = _optuna()
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
    optuna = _optuna()
    try:
        steps = optuna.load_study(study_name=name, storage=storage).user_attrs.get("rung_steps")
    except KeyError:  # no such study yet
        return None
    return steps[0] if steps else None


def proxy(p, opts: Options, rung: int) -> float:
    """The cheap proxy score of a paused point, from its checkpoint, logged nowhere but the trial."""
    from mmln.evaluate import evaluate

    cfg = OmegaConf.merge(p.cfg, OmegaConf.from_dotlist(list(opts.proxy_overrides)))
    ckpt = str(p.run_dir / "checkpoints" / "last.ckpt")
    if opts.proxy_metric == VAL_LOSS:
        return val_loss(cfg, ckpt)
    scores = evaluate(cfg, ckpt, [opts.proxy_bench],
                      p.run_dir / "halving" / f"rung{rung}", log=False)
    if opts.proxy_metric not in scores["metrics"]:
        raise ConfigError(f"--proxy-metric {opts.proxy_metric}: {opts.proxy_bench} gave only "
                          f"{', '.join(sorted(scores['metrics']))}")
    return float(scores["metrics"][opts.proxy_metric])


def val_loss(cfg, ckpt: str) -> float:
    """Mean loss (per sample) of the checkpoint on the run's validation records (`data.val`)."""
    import torch
    from torch.utils.data import DataLoader

    from mmln.data.dataset import Collator, build_datasets, pad_token_id
    from mmln.evaluate import load_model

    mllm, tokenizer, _ = load_model(cfg, ckpt)
    _, val = build_datasets(cfg, tokenizer, mllm.vision.num_patches)
    if val is None or len(val) == 0:
        raise ConfigError(f"--proxy-metric {VAL_LOSS}: the run has no validation records: set data.val.files "
                          "(held-out LLaVA records; data.val.limit=N for a fixed subset) or another proxy")
    device = next(mllm.parameters()).device
    total = count = 0.0
    with torch.no_grad():
        for b in DataLoader(val, batch_size=cfg.eval.batch_size, collate_fn=Collator(pad_token_id(tokenizer))):
            if b["empty"]:
                continue
            out = mllm(b["input_ids"].to(device), b["attention_mask"].to(device), b["labels"].to(device),
                       b["pixel_values"].to(device))
            total, count = total + float(out.loss) * len(b["ids"]), count + len(b["ids"])
    return total / count


def log_budget(client, parent_id: str, budget: dict[str, float], opts: Options, storage: str) -> None:
    """The parent run's budget metrics and the search's settings (`client`: a mmln.tracking.Tracker)."""
    client.log_metrics(parent_id, budget)
    client.set_tags(parent_id, {"search": "halving", "halving/rule": opts.rule, "halving/eta": opts.eta,
                                "halving/first_rung": f"{opts.first_rung:.6g}",
                                "halving/proxy": f"{opts.proxy_metric} ({' '.join(opts.proxy_overrides)})",
                                "optuna/storage": storage})
