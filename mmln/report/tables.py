"""The report's tables in the paper's shapes (Tables 1-6 and A1), built from the rows
(`mmln.report.rows`): `BUILDERS[key](runs, metric)` -> `Table`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from mmln.eval.columns import TABLE1_COLUMNS
from mmln.report.rows import (ABLATION, Run, Stat, best, group, lr_label, reference, reference_setting, seed_stat,
                              studied)


BENCH_COLS = TABLE1_COLUMNS


@dataclass
class Table:
    key: str
    title: str
    header: list[str]
    rows: list[list[Any]]
    n_keys: int  # leading label columns; the rest are values
    empty: str = ""  # the one line shown when the table has no data
    no_data: bool = False  # rows exist but do not make this table (e.g. one vision encoder only)
    runs: list[str] = field(default_factory=list)  # per row: the run it came from (an extra last column)
    scale: str = ""  # what the rows are: their runs' scale, and "smoke scale: not evidence" below the threshold


def bench_table(key: str, title: str, runs: list[Run], metric: str, extra: Optional[tuple[str, str]] = None,
                empty: str = "") -> Table:
    """Rows (model, strategy[, extra]) at the best lr; columns the paper's benchmarks."""
    labels = ["model", "strategy"] + ([extra[0]] if extra else []) + ["lr"]
    rows, used = [], []
    for (model, strategy, *rest), group_runs in group(
            runs, lambda r: (r.model, r.strategy) + ((getattr(r, extra[1]),) if extra else ())).items():
        run, scored = best(group_runs, metric)
        rows.append([model, strategy, *rest, lr_label(run, scored)] + [seed_stat(group_runs, run, m) for _, m in BENCH_COLS])
        used.append(run.label)
    return Table(key, title, labels + [c for c, _ in BENCH_COLS], rows, len(labels), empty, runs=used)


def table1(runs, metric):
    ref = [r for r in reference(runs) if r.strategy not in ABLATION[1:]]
    return bench_table("table1", f"Table 1: strategies x benchmarks at each strategy's best learning rate "
                                 f"(by {metric})", ref, metric, empty="no stage-2 evaluation results")


PARAM_GROUPS = ("norms", "connector", "embeddings", "head", "adapters", "other")  # mmln.tuning.selectors.GROUPS


def table2(runs, metric):
    """Per strategy: the total (adapters included) and trainable counts, the trainable count of each
    group (`params/trainable_<group>`), peak memory and throughput."""
    rows, used = [], []
    for (model, strategy), g in group(reference(runs), lambda r: (r.model, r.strategy)).items():
        run, scored = best(g, metric)
        m = run.metrics
        rows.append([model, strategy, lr_label(run, scored), m.get("params/total"), m.get("params/trainable"),
                     m.get("params/percent"), *(m.get(f"params/trainable_{k}") for k in PARAM_GROUPS),
                     m.get("perf/peak_mem_gb"), m.get("perf/tokens_per_s")])
        used.append(run.label)
    return Table("table2", "Table 2: trainable parameters (split by group) and peak memory per strategy",
                 ["model", "strategy", "lr", "total", "trainable", "trainable %", *PARAM_GROUPS, "peak mem (GB)",
                  "tokens/s"], rows, 3, "no params/* or perf/* metrics", runs=used)


def axis_table(name: str, title: str, runs, metric, axis: str, fixed: str, empty: str) -> Table:
    """Best run per (model, strategy, `axis` setting), among runs with the model's reference `fixed`
    setting and only for pairs run in more than one `axis` setting (Tables 3 and 5)."""
    keep = studied([r for r in runs if getattr(r, fixed) == reference_setting(runs, r.model, fixed)], axis)
    t = bench_table(name, f"{title} (best learning rate per row, by {metric})", keep, metric, (axis, axis))
    if not keep:
        t.no_data, t.empty = True, empty
    return t


def table3(runs, metric):
    return axis_table("table3", "Table 3: data types", runs, metric, "data", "vision",
                      "no data-type runs (runs with data.train.types / data.train.limit set, e.g. mmln.sweep --variant)")


def table4(runs, metric):
    ref = [r for r in reference(runs) if r.strategy in ABLATION]
    t = bench_table("table4", f"Table 4: connector ablation (best learning rate per row, by {metric})", ref, metric)
    if not {r.strategy for r in ref} & set(ABLATION[1:]):
        t.no_data, t.empty = True, "no connector / layernorm_no_connector runs"
    return t


def table5(runs, metric):
    return axis_table("table5", "Table 5: vision encoder", runs, metric, "vision", "data",
                      "runs with one vision encoder only (Table 5 compares two, e.g. a timm ImageNet ViT)")


def table6(runs, metric):
    rows, used = [], []
    for (model, strategy), g in group(reference(runs), lambda r: (r.model, r.strategy)).items():
        run, scored = best(g, metric)
        rows.append([model, strategy, lr_label(run, scored), run.metrics.get("analysis/layer_similarity")])
        used.append(run.label)
    return Table("table6", "Table 6: mean cross-layer similarity of the decoder's hidden states (lower = more "
                           "expressive)", ["model", "strategy", "lr", "layer similarity"], rows, 3,
                 "no analysis/layer_similarity metric", runs=used)


def tableA1(runs, metric):
    ref = reference(runs)
    lrs = sorted({r.lr for r in ref if metric in r.metrics}, reverse=True)
    rows = []
    for (model, strategy), g in group(ref, lambda r: (r.model, r.strategy)).items():
        rows.append([model, strategy] + [Stat.of([r.metrics.get(metric) for r in g if r.lr == lr]) for lr in lrs])
    return Table("tableA1", f"Table A1: {metric} per learning rate", ["model", "strategy"] + [f"{lr:g}" for lr in lrs],
                 rows, 2, f"no run has {metric}")


BUILDERS = {"table1": table1, "table2": table2, "table3": table3, "table4": table4, "table5": table5,
            "table6": table6, "tableA1": tableA1}


def add_baselines(t: Table, untuned: list[Run]) -> None:
    """Table 1's reference rows under each model's strategies: the untuned model's evaluation (when the
    experiment has one: `mmln.evaluate --ckpt none`) and chance (`mmln.report.scale.CHANCE`)."""
    from mmln.report.scale import CHANCE, CHANCE_RULE

    if not has_data(t):
        return
    models = list(dict.fromkeys([row[0] for row in t.rows] + [r.model for r in untuned]))
    rows, runs = [], []
    for model in models:
        mine = [i for i, row in enumerate(t.rows) if row[0] == model]
        rows += [t.rows[i] for i in mine]
        runs += [t.runs[i] for i in mine]
        for r in (r for r in untuned if r.model == model):
            rows.append([model, "untuned", "-"] + [r.metrics.get(m) for _, m in BENCH_COLS])
            runs.append(r.label)
        rows.append([model, "chance", "-"] + [CHANCE.get(m) for _, m in BENCH_COLS])
        runs.append(CHANCE_RULE)
    t.rows, t.runs = rows, runs


def has_data(t: Table) -> bool:
    return not t.no_data and any(v is not None for row in t.rows for v in row[t.n_keys:])
