"""The one rule that picks a strategy's learning rate (used by `mmln.sweep` and `mmln.report`), and
the statistics over training seeds.

A learning rate's score is the mean of its seeds' scores (NaN and missing scores left out); the
best learning rate has the best mean (the highest; the lowest for a loss, `higher_is_better`), and a tie goes to the higher learning rate (the paper's
sweeps favour the cheaper-to-converge end). `mean_ci` gives the mean and the half-width of its
two-sided Student-t confidence interval (SciPy), NaN with fewer than two seeds. `paired_bootstrap`
compares two evaluations on the same benchmark items (SciPy's paired bootstrap).
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional

DEFAULT_METRIC = "eval/flickr30k_cider"  # what picks a strategy's learning rate unless told otherwise


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


def higher_is_better(metric: str) -> bool:
    """Every evaluation score is better higher; a loss (`train/loss`, `val/loss`: a last name part
    that names a loss) is better lower. The one place the direction of a selection metric is decided."""
    return "loss" not in metric.rsplit("/", 1)[-1]


def best_lr(scores: Mapping[float, Iterable[Optional[float]]], maximize: bool = True) -> Optional[float]:
    """The learning rate with the best mean score over its seeds (the highest, or the lowest when not
    `maximize`; tie: the higher lr); None when no learning rate has a score."""
    sign = 1.0 if maximize else -1.0
    means = {lr: mean_ci(v)[0] for lr, v in scores.items()}
    scored = [(sign * m, lr) for lr, m in means.items() if not math.isnan(m)]
    return max(scored)[1] if scored else None


def paired_bootstrap(a, b, confidence: float = 0.95, n_resamples: int = 4000, seed: int = 0
                     ) -> tuple[float, float, float]:
    """(difference, low, high): `a.value() - b.value()` of two evaluations' per-item terms on the
    same items (`mmln.eval.items.Items`, aligned), with the percentile interval of the paired
    bootstrap: each resample draws N items with replacement, the same items for both, and
    recomputes both columns (`sum(num) / sum(den)`) and their difference.

    Vectorised NumPy: a resample is a multinomial count per distinct item (items whose four terms
    are equal are interchangeable, so they are pooled first: right / wrong answers leave a handful),
    the same distribution as drawing indices, at a cost that does not grow with the benchmark.
    Seeded, so a report is reproducible; identical evaluations give (0, 0, 0)."""
    import numpy as np

    from mmln.eval.items import share

    data = np.stack([a.num, a.den, b.num, b.den], axis=1).astype(float)
    n = len(data)
    total = data.sum(axis=0)
    value = float(share(total[0], total[1]) - share(total[2], total[3]))
    if n < 2:
        return value, math.nan, math.nan
    rows, mult = np.unique(data, axis=0, return_counts=True)
    rng, diffs = np.random.default_rng(seed), []
    step = max(1, 4_000_000 // len(rows))  # resamples per batch: bounded memory
    for start in range(0, n_resamples, step):
        sums = rng.multinomial(n, mult / n, size=min(step, n_resamples - start)) @ rows
        diffs.append(share(sums[:, 0], sums[:, 1]) - share(sums[:, 2], sums[:, 3]))
    low, high = np.quantile(np.concatenate(diffs), [(1 - confidence) / 2, (1 + confidence) / 2])
    return value, float(low), float(high)
