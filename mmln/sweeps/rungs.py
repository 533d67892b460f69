"""The rung rule of successive halving, pure functions of numbers (no Optuna, no training): where
the rungs end (`rung_steps`), which points survive a rung (`survivors`: the synchronous rule on
per-point proxies), and the same rule over a study's stored trials (`sync_promoted`, what the
`--halving-rule sync` pruner asks). A simulator or a benchmark reuses them as they are."""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Mapping


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


def survivors(proxies: Mapping[float, float], eta: int, maximize: bool = True) -> list[float]:
    """The synchronous halving rule: of n points (learning rate -> proxy score at the rung's end),
    the best ceil(n / eta) go on, best first: ranked by the proxy (`maximize`, or lowest first for a
    loss), NaN ranking last, a tie going to the higher learning rate (as `mmln.eval.selection.best_lr`
    breaks ties)."""
    def rank(lr: float):
        v = float(proxies[lr])
        return (not math.isnan(v), 0.0 if math.isnan(v) else (v if maximize else -v), lr)

    return sorted(proxies, key=rank, reverse=True)[: math.ceil(len(proxies) / eta)]


class RungIncomplete(RuntimeError):
    """The synchronous rule was asked to decide a rung that some of its trials have not reported."""


def sync_promoted(trials: list, lrs: list[float], steps: list[int], rung: int, eta: int, maximize: bool) -> set[int]:
    """The synchronous rule: the trial numbers promoted at `rung` (whose proxy is reported at step
    `steps[rung]`). Rung 0's trials: one per grid lr, the lowest-numbered trial that reported rung 0
    (a trial that finished or failed without reporting it, e.g. a point the full grid had already
    trained, takes no part). Rung k's trials: those promoted at rung k-1. Once every trial of the
    rung has reported, the best ceil(n / eta) of its n trials go on: ranked by `survivors`. A pure function of the stored intermediate values, so a restarted or second process
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
        kept = set(survivors({t.params["lr"]: t.intermediate_values[steps[k]] for t in members}, eta, maximize))
        members = [t for t in members if t.params["lr"] in kept]
    return {t.number for t in members}
