"""The one rule that picks a strategy's learning rate (used by `mmln.sweep` and `mmln.report`), and
the statistics over training seeds.

A learning rate's score is the mean of its seeds' scores (NaN and missing scores left out); the
best learning rate has the highest mean, and a tie goes to the higher learning rate (the paper's
sweeps favour the cheaper-to-converge end). `mean_ci` gives the mean and the half-width of its
two-sided Student-t confidence interval (SciPy), NaN with fewer than two seeds.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional


def finite(values: Iterable[Optional[float]]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def mean_ci(values: Iterable[Optional[float]], confidence: float = 0.95) -> tuple[float, float, int]:
    """(mean, CI half-width, n) of the finite values; (nan, nan, 0) for none, half-width nan for one."""
    import numpy as np
    from scipy import stats

    x = np.asarray(finite(values), dtype=float)
    if x.size == 0:
        return math.nan, math.nan, 0
    if x.size == 1:
        return float(x[0]), math.nan, 1
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * stats.sem(x))
    return float(x.mean()), half, int(x.size)


def best_lr(scores: Mapping[float, Iterable[Optional[float]]]) -> Optional[float]:
    """The learning rate with the highest mean score over its seeds (tie: the higher lr); None when
    no learning rate has a score."""
    means = {lr: mean_ci(v)[0] for lr, v in scores.items()}
    scored = [(m, lr) for lr, m in means.items() if not math.isnan(m)]
    return max(scored)[1] if scored else None
