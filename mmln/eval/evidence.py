"""What makes a result evidence: the thresholds below which a result is "smoke scale: not evidence"
(`Evidence`; `mmln.report`'s `--smoke-*` options, `mmln.evaluate`'s printed table) and the chance
level of each Table-1 column (`CHANCE`). Data only: the report (`mmln.report.scale`) and the
commands share one definition."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

SMOKE = "smoke scale: not evidence"

# random answers: MME's acc 0.5 and acc+ 0.25 per subtask (10 perception, 4 cognition subtasks, each
# scored 100 * (acc + acc+)); POPE's splits are balanced yes / no, so accuracy and F1 50%
CHANCE: dict[str, float] = {
    "eval/mme_perception": 100.0 * 10 * 0.75, "eval/mme_cognition": 100.0 * 4 * 0.75,
    **{f"eval/pope_{s}_{m}": 50.0 for s in ("random", "popular", "adversarial") for m in ("accuracy", "f1")},
}
CHANCE_RULE = "random answers: MME acc 0.5, acc+ 0.25; POPE balanced yes/no (no chance level for VQAv2 or CIDEr)"


@dataclass(frozen=True)
class Evidence:
    """Below any of these, a result is smoke scale: fewer optimizer steps, fewer samples seen, or an
    evaluation limited to fewer items per benchmark (`eval.limit`)."""

    min_steps: int = 100
    min_samples: int = 1000
    min_eval_limit: int = 100

    def describe(self) -> str:
        return (f"fewer than {self.min_steps:,} optimizer steps, {self.min_samples:,} samples seen or "
                f"eval.limit {self.min_eval_limit:,}")


def limit_note(limit: Optional[int], evidence: Evidence = Evidence()) -> str:
    """An evaluation's scale: "full evaluation" or "eval.limit N (items per benchmark)", and below
    `evidence.min_eval_limit`, "smoke scale: not evidence"."""
    if not limit:
        return "Scale: full evaluation (no eval.limit)"
    smoke = limit < evidence.min_eval_limit
    return f"Scale: eval.limit {limit} (items per benchmark)" + (
        f"; {SMOKE} (eval.limit under {evidence.min_eval_limit:,})" if smoke else "")
