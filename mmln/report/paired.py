"""Paired tests: for each pair of Table 1's strategies at their chosen learning rates, every
Table-1 column's difference with its paired bootstrap interval over the same benchmark items, read
back from the evaluations' answer files (`mmln.eval.items`, `mmln.eval.selection.paired_bootstrap`)."""
from __future__ import annotations

import math

from mmln.report.rows import ABLATION, Run, best, group, reference
from mmln.report.tables import BENCH_COLS, Table


class Diff(float):
    """A paired difference A - B with its bootstrap interval; `significant` when it excludes 0."""

    low: float = math.nan
    high: float = math.nan

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def evaluation_items(client, run_id: str) -> dict:
    """metric -> per-item terms of the run's evaluation (`eval/scores.json` names its answer files)."""
    from mmln.eval.items import evaluation_items as items_of

    scores = client.read_json(run_id, "eval/scores.json")
    return items_of(scores) if scores else {}  # no evaluation artifact: nothing to pair


def seed_items(per_run: list[dict]) -> dict:
    """The per-item terms averaged over a point's seeds (metrics every seed has, on the same items)."""
    from mmln.eval.items import Items

    out = {}
    for m in set.intersection(*(set(d) for d in per_run)) if per_run else ():
        first = per_run[0][m]
        same = [d[m].aligned(first.ids) for d in per_run]
        out[m] = Items(first.ids, sum(x.num for x in same) / len(same), sum(x.den for x in same) / len(same))
    return out


def paired_tables(client, runs: list[Run], metric: str) -> tuple[Table, Table]:
    """(one row per strategy pair and a cell per Table-1 column, one row per pair and column):
    the difference of the two strategies' columns at their chosen lrs with its paired bootstrap
    interval (`mmln.eval.selection.paired_bootstrap`)."""
    from itertools import combinations

    from mmln.eval.selection import paired_bootstrap

    ref = [r for r in reference(runs) if r.strategy not in ABLATION[1:]]
    rows, long, used, notes = [], [], [], []
    chosen: dict[str, list[tuple[str, Run, dict]]] = {}
    for (model, strategy), g in group(ref, lambda r: (r.model, r.strategy)).items():
        run, scored = best(g, metric)
        if not scored:
            continue
        try:
            items = seed_items([evaluation_items(client, r.run_id) for r in g if r.lr == run.lr])
        except (OSError, ValueError) as e:  # answer or ground-truth files gone, or seeds on other items
            notes.append(f"{model} {strategy}: {e}")
            continue
        if items:
            chosen.setdefault(model, []).append((strategy, run, items))
    for model, entries in chosen.items():
        for (sa, ra, ia), (sb, rb, ib) in combinations(entries, 2):
            cells = []
            for col, m in BENCH_COLS:
                if m not in ia or m not in ib:
                    cells.append(None)
                    continue
                try:
                    d, lo, hi = paired_bootstrap(ia[m], ib[m].aligned(ia[m].ids))
                except ValueError as e:
                    notes.append(f"{model} {sa} vs {sb} {col}: {e}")
                    cells.append(None)
                    continue
                cell = Diff(d)
                cell.low, cell.high = lo, hi
                cells.append(cell)
                long.append([model, sa, sb, col, m, d, lo, hi, cell.significant, len(ia[m].ids)])
            rows.append([model, f"{sa} (lr {ra.lr:g})", f"{sb} (lr {rb.lr:g})"] + cells)
            used.append(f"{ra.label} vs {rb.label}")
    empty = "no pair of strategies with per-item answers (evaluations record them in eval/scores.json)"
    if notes:
        empty += "; " + "; ".join(notes[:5])
    title = (f"Paired tests: Table 1 differences A - B at each strategy's best lr (by {metric}), 95% paired "
             "bootstrap interval over the benchmark items; * = significant at 95%")
    compact = Table("paired", title, ["model", "A", "B"] + [c for c, _ in BENCH_COLS], rows, 3, empty, runs=used)
    return compact, Table("paired", title, ["model", "A", "B", "column", "metric", "difference", "low", "high",
                                            "significant", "n_items"], long, 5, empty)
