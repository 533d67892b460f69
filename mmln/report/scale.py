"""What a result is: the scale of the runs behind a table or figure (optimizer steps, samples seen,
`eval.limit`), "smoke scale: not evidence" below a threshold (`Evidence`, the report's `--smoke-*`
options), the chance levels of the benchmarks, and where a figure contradicts the paper (decided
from the figure's data, said in its caption).

A run's steps are fit's `train/steps` metric (its optimizer steps), else the `train.max_steps`
param when set (runs logged before that metric); samples seen are `train/samples_seen` (steps x
`train.global_batch_size`), else that product from the params.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

from mmln.eval.evidence import CHANCE, CHANCE_RULE, SMOKE, Evidence

__all__ = ["CHANCE", "CHANCE_RULE", "SMOKE", "Evidence", "caption", "grads_verdict", "is_smoke", "scale_note",
           "scale_of", "similarity_verdict"]


def _span(values: list[float], unit: str) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,.0f}{'' if lo == hi else f'-{hi:,.0f}'} {unit}"


def scale_of(runs: Iterable) -> str:
    """"8 optimizer steps, 128 samples seen, eval.limit 16" (ranges when the runs differ)."""
    runs = list(runs)
    trained = [r for r in runs if not r.baseline]
    steps = [r.steps for r in trained if r.steps is not None]
    samples = [r.samples for r in trained if r.samples is not None]
    limits = sorted({r.eval_limit for r in runs if r.metrics_evaluated}, key=lambda x: (x == "none", x.zfill(12)))
    unknown = sum(r.steps is None for r in trained)
    parts = [_span(steps, "optimizer steps") if steps else "",
             f"optimizer steps not recorded{'' if unknown == len(trained) else f' for {unknown} runs'}" if unknown else "",
             _span(samples, "samples seen") if samples else "",
             ("full evaluations" if limits == ["none"] else "eval.limit " + "/".join(limits)) if limits else ""]
    return ", ".join(p for p in parts if p) or "scale not recorded"


def is_smoke(runs: Iterable, evidence: Evidence) -> bool:
    for r in runs:
        if r.steps is not None and r.steps < evidence.min_steps and not r.baseline:
            return True
        if r.samples is not None and r.samples < evidence.min_samples and not r.baseline:
            return True
        if r.metrics_evaluated and r.eval_limit not in ("", "none") and float(r.eval_limit) < evidence.min_eval_limit:
            return True
    return False


def scale_note(runs: Iterable, evidence: Evidence) -> str:
    """"Scale: <scale_of>" and, below `evidence`, "; smoke scale: not evidence (below ...)"."""
    runs = list(runs)
    if not runs:
        return ""
    smoke = is_smoke(runs, evidence)
    return f"Scale: {scale_of(runs)}" + (f"; {SMOKE} ({evidence.describe()})" if smoke else "")


def _offdiag_mean(m) -> float:
    import numpy as np

    m = np.asarray(m, dtype=np.float64)
    return float(np.nanmean(m[~np.eye(len(m), dtype=bool)])) if len(m) > 1 else math.nan


def similarity_verdict(mats: dict[str, object], tol: float = 0.005) -> str:
    """Fig. 3's caption from its data (label -> matrix; labels start with the strategy): the heatmaps
    identical (within `tol`), or LayerNorm's mean similarity above finetune's (the paper's opposite)."""
    import numpy as np

    items = list(mats.items())
    if len(items) == 2 and np.shape(items[0][1]) == np.shape(items[1][1]):
        diff = float(np.nanmax(np.abs(np.asarray(items[0][1], float) - np.asarray(items[1][1], float))))
        if diff <= tol:
            return (f"the two heatmaps are identical (largest difference {diff:.2g}, at most {tol:g}): "
                    "this figure shows no difference between the strategies")
    mean = {label.split(" ")[0]: _offdiag_mean(m) for label, m in items}
    ft, ln = mean.get("finetune"), mean.get("layernorm")
    if ft is not None and ln is not None and ln > ft:
        return (f"contradicts the paper: LayerNorm's mean layer similarity ({ln:.4f}) is above finetune's "
                f"({ft:.4f}); the paper finds it lower (Fig. 3, Table 6)")
    return ""


def grads_verdict(variances: dict[str, float]) -> str:
    """Fig. 4's caption from its data (strategy -> mean gradient variance over the drawn steps)."""
    ft, ln = variances.get("finetune"), variances.get("layernorm")
    if ft is not None and ln is not None and ln > ft:
        return (f"contradicts the paper: LayerNorm's gradient variance ({ln:.3g}) is above finetune's ({ft:.3g}); "
                "the paper finds it lower (Fig. 4)")
    return ""


def caption(*parts: Optional[str]) -> str:
    return "; ".join(p for p in parts if p)
