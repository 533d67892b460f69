"""python -m mmln.report --experiment NAME[,NAME...] | --config CFG [key=value ...] [--out DIR] [--tables ...]

Paper-style tables and figures from the MLflow runs of one or more experiments (read with
`mmln.tracking.Tracker.runs`), written to `--out` (default `outputs/<experiment>/report/`):

    report.md              every table, in the paper's shapes (a table without data says so in one line)
    <table>.csv            the same numbers, unrounded
    lr_curves_<model>.png  the selection metric over the learning rate, one line per strategy
    fig3_similarity_<model>.png  finetune and LayerNorm layer-similarity heatmaps, one colour scale
    fig4_ln_grads_<model>.png    the same norm's gradient histograms over steps, finetune | LayerNorm
    data_types_<model>.png Table 3 as bars (the paper's Fig. 2)
    analysis/<model>-<strategy>/...  the `analysis/` PNGs (layer-similarity heatmaps, LayerNorm
                           gradient plots) that each strategy's best run logged, when there are any

and logged as artifacts (under `report/`, or `report/<DIR name>` for another `--out`) of a run named `report` (tag `kind=report`) in the first
experiment. Only FINISHED stage-2 runs count (tag `stage=instruct`; sweep parents and report
runs carry a `kind` tag and are left out). A run is described by its tags `model`, `strategy`,
`lr`, `data_subset`, `variant` (set by `mmln.sweep --variant`) and its params
`model.vision.backend` / `model.vision.name` and `train.seed`; when several runs share all of them,
one counts by an explicit rule: a run of the reference config (`--config CFG [key=value ...]`, as
`make report` and the `experiments/` targets pass it: the run's params equal the config's on every
key but the per-point ones) first, then a full evaluation (no `eval_limit` tag), then the newest.
Every table names the run of each row in its last column (`run`). "Best" = `mmln.eval.selection.best_lr`,
the rule `mmln.sweep` uses: the highest mean `--select-metric` over a learning rate's seeds (default
Flickr30k CIDEr, as the paper selects; a tie goes to the higher learning rate); a group none of
whose runs has that metric shows its newest run, marked `*`. With several seeds (`mmln.sweep
--seeds N`) a cell of Tables 1, 3, 4, 5 and A1 is the mean over the seeds and, in report.md,
`mean ± half-width of its 95% Student-t CI` (the CSVs hold the means); the LR curves draw the same
intervals as error bars.

- Table 1: strategies x benchmarks at each strategy's best learning rate (reference runs: no variant).
- Table 2: trainable parameters (% of the whole MLLM) and peak memory per strategy.
- Table 3: data types: one row per `data_subset` (runs with the reference vision encoder).
- Table 4: connector ablation: layernorm / connector / layernorm_no_connector.
- Table 5: vision encoder: one row per backend / timm name (runs with the reference data).
- Table 6: layer similarity (`analysis/layer_similarity`) per strategy.
- Table A1: the selection metric per learning rate per strategy.
- Paired tests (`paired`): for each pair of Table 1's strategies at their chosen learning rates,
  the difference of every Table-1 column with the 95% interval of a paired bootstrap over the same
  benchmark items (questions for POPE / VQAv2, images for MME and the captions), read back from the
  evaluations' answer files (`mmln.eval.items`, `mmln.eval.selection.paired_bootstrap`); `*` marks a
  difference whose interval excludes 0. With several seeds an item's terms are averaged over
  the seeds of the chosen lr first (the interval covers item sampling, not training noise).
  `paired.csv` holds one line per (pair, column).
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from mmln.eval.columns import TABLE1_COLUMNS
from mmln.base.io import atomic_path, save_figure, write_text
from mmln.eval.selection import DEFAULT_METRIC
BENCH_COLS = TABLE1_COLUMNS
STRATEGY_ORDER = ["finetune", "lora", "attn_qv", "attn_mlp", "layernorm", "layernorm_simple", "connector",
                  "layernorm_no_connector"]
ABLATION = ["layernorm", "connector", "layernorm_no_connector"]
TABLES = ["table1", "table2", "table3", "table4", "table5", "table6", "tableA1", "paired", "figures"]


@dataclass
class Run:
    run_id: str
    model: str
    strategy: str
    lr: float
    variant: str
    data: str
    vision: str
    start: int
    metrics: dict[str, float] = field(default_factory=dict)
    seed: str = ""  # param train.seed: runs of several seeds at one point are kept apart, then averaged
    name: str = ""
    limited: bool = False  # evaluated with eval.limit (a subset of every benchmark)
    mismatch: list[str] = field(default_factory=list)  # config keys that differ from the reference config

    @property
    def label(self) -> str:
        """How a table names the run its row came from: `<run name> (<run id[:8]>)` plus its caveats."""
        notes = (["eval.limit"] if self.limited else []) + (
            [f"other config: {', '.join(self.mismatch[:3])}{', ...' if len(self.mismatch) > 3 else ''}"]
            if self.mismatch else [])
        return f"{self.name} ({self.run_id[:8]})" + (f" [{'; '.join(notes)}]" if notes else "")

    def rank(self) -> tuple:
        """The explicit row rule: the reference config first, then a full evaluation, then the newest."""
        return (not self.mismatch, not self.limited, self.start)


class Stat(float):
    """A cell's value: the mean over a point's seeds, with the half-width of its 95% CI (`n` seeds)."""

    half: float = math.nan
    n: int = 1

    @classmethod
    def of(cls, values) -> Optional["Stat"]:
        from mmln.eval.selection import mean_ci

        mean, half, n = mean_ci(values)
        if n == 0:
            return None
        out = cls(mean)
        out.half, out.n = half, n
        return out


class Diff(float):
    """A paired difference A - B with its bootstrap interval; `significant` when it excludes 0."""

    low: float = math.nan
    high: float = math.nan

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


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


# ------------------------------------------------------------------------------------ reading
def data_label(subset: str) -> str:
    """fit's tag `data_subset` ("conversation:20000", "all:all") -> "conversation (20000)", "all"."""
    types, _, limit = subset.partition(":")
    return types + (f" ({limit})" if limit and limit != "all" else "")


def vision_label(params: dict[str, str]) -> str:
    backend = params.get("model.vision.backend", "hf_clip")
    return "CLIP (hf_clip)" if backend == "hf_clip" else f"{backend}:{params.get('model.vision.name', '?')}"


# per-point keys a run may differ in from the reference config and still be "of" that config
POINT_KEYS = ("tune.strategy", "train.lr", "train.seed", "run_name", "resume", "quiet", "debug.", "data.num_workers",
              "tracking.", "output_dir")
VARIANT_KEYS = ("data.train.", "model.vision.", "model.connector.")  # what a variant (Tables 3 and 5) changes


def mismatch(params: dict[str, str], reference: Optional[dict[str, str]], variant: str) -> list[str]:
    """The reference config's keys whose value in the run's params (fit logs the flattened config) differ."""
    if reference is None:
        return []
    skip = POINT_KEYS + (VARIANT_KEYS if variant else ())
    return sorted(k for k, v in reference.items() if not k.startswith(skip) and k in params and params[k] != v)


def reference_params(configs: list[tuple[str, list[str]]]) -> dict[str, dict[str, str]]:
    """model name -> the flattened reference config, rendered as MLflow params are (`str(value)[:250]`)."""
    from mmln.config import flatten, load_config

    out = {}
    for path, overrides in configs:
        cfg = load_config(path, overrides)
        out[cfg.model.name] = {k: ("" if v is None else str(v))[:250] for k, v in flatten(cfg).items()}
    return out


def load_runs(client, experiment_ids: list[str], references: Optional[dict[str, dict[str, str]]] = None) -> list[Run]:
    """FINISHED stage-2 runs, one per (model, strategy, lr, variant, data, vision), chosen by `Run.rank`:
    a run of the reference config (when `references` gives one for its model) over one of another
    config, a full evaluation over one with `eval.limit`, then the newest."""
    runs = client.runs(experiment_ids, "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])
    out: dict[tuple, Run] = {}
    for r in runs:
        t, p = r.data.tags, r.data.params
        if t.get("stage") != "instruct" or t.get("kind"):
            continue
        lr = float(t.get("lr") or p.get("train.lr") or "nan")
        model, variant = t.get("model", "?"), t.get("variant", "")
        run = Run(r.info.run_id, model, t.get("strategy", "?"), lr, variant,
                  data_label(t.get("data_subset", "all:all")), vision_label(p), r.info.start_time, dict(r.data.metrics),
                  seed=p.get("train.seed", ""), name=r.info.run_name or "",
                  limited=t.get("eval_limit", "none") not in ("", "none"),
                  mismatch=mismatch(p, (references or {}).get(model), variant))
        key = (run.model, run.strategy, run.lr, run.variant, run.data, run.vision, run.seed)
        if key not in out or out[key].rank() < run.rank():
            out[key] = run
    return list(out.values())


# ----------------------------------------------------------------------------------- grouping
def _strategy_key(s: str) -> tuple:
    return (STRATEGY_ORDER.index(s) if s in STRATEGY_ORDER else len(STRATEGY_ORDER), s)


def group(runs: list[Run], key: Callable[[Run], tuple]) -> dict[tuple, list[Run]]:
    out: dict[tuple, list[Run]] = {}
    for r in sorted(runs, key=lambda r: (r.model, _strategy_key(r.strategy), key(r))):
        out.setdefault(key(r), []).append(r)
    return out


def best(runs: list[Run], metric: str) -> tuple[Run, bool]:
    """(a run of the best learning rate, True) or (the newest run, False) when none has `metric`.
    The best lr is `mmln.eval.selection.best_lr` (highest mean over seeds, tie: higher lr), the rule
    mmln.sweep uses; of that lr's seeds, the best-scoring run."""
    from mmln.eval.selection import best_lr, higher_is_better

    scored = [r for r in runs if metric in r.metrics and not math.isnan(r.metrics[metric])]
    sign = 1.0 if higher_is_better(metric) else -1.0
    lr = best_lr({r.lr: [x.metrics[metric] for x in scored if x.lr == r.lr] for r in scored}, sign > 0)
    if lr is not None:
        return max((r for r in scored if r.lr == lr), key=lambda r: (sign * r.metrics[metric], r.start)), True
    return max(runs, key=lambda r: r.start), False


def seed_stat(runs: list[Run], run: Run, metric: str) -> Optional[float]:
    """`metric` over the seeds of `run`'s point (its lr in `runs`): a `Stat`, None when none has it."""
    return Stat.of([r.metrics.get(metric) for r in runs if r.lr == run.lr])


def reference(runs: list[Run]) -> list[Run]:
    return [r for r in runs if not r.variant]


def reference_setting(runs: list[Run], model: str, attr: str) -> Optional[str]:
    """The most common data subset / vision encoder of a model's reference runs."""
    values = [getattr(r, attr) for r in runs if r.model == model and not r.variant]
    return Counter(values).most_common(1)[0][0] if values else None


def studied(runs: list[Run], attr: str) -> list[Run]:
    """The runs of the (model, strategy) pairs that were run in more than one `attr` setting."""
    seen: dict[tuple, set] = {}
    for r in runs:
        seen.setdefault((r.model, r.strategy), set()).add(getattr(r, attr))
    return [r for r in runs if len(seen[(r.model, r.strategy)]) > 1]


def lr_label(run: Run, scored: bool) -> str:
    return f"{run.lr:g}" + ("" if scored else "*")


# ------------------------------------------------------------------------------------- tables
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


BUILDERS = {"table1": table1, "table2": table2, "table3": table3, "table4": table4, "table5": table5,
            "table6": table6, "tableA1": tableA1}


# ------------------------------------------------------------------------------------ writing
def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, Stat) and v.n > 1:  # mean +- 95% CI half-width over the seeds
        return f"{fmt(float(v))} ± {fmt(v.half)}"
    if isinstance(v, Diff):  # a paired difference [95% bootstrap interval], * = significant
        return f"{'+' if v > 0 else ''}{fmt(float(v))} [{fmt(v.low)}, {fmt(v.high)}]" + ("*" if v.significant else "")
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == int(v) and abs(v) >= 1000:
            return f"{int(v):,}"
        return f"{v:.2f}" if abs(v) >= 1 else f"{v:.4g}"
    return str(v)


def has_data(t: Table) -> bool:
    return not t.no_data and any(v is not None for row in t.rows for v in row[t.n_keys:])


def markdown(t: Table, bold_max: bool = False) -> str:
    if not has_data(t):
        return f"### {t.title}\n\nNo data: {t.empty or 'no matching runs'}.\n"
    header = t.header + (["run"] if t.runs else [])
    lines = [f"### {t.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n, row in enumerate(t.rows):
        cells = [fmt(v) for v in row]
        values = [v for v in row[t.n_keys:] if isinstance(v, float) and not math.isnan(v)]
        if bold_max and values:
            top = max(values)
            cells = [f"**{c}**" if i >= t.n_keys and row[i] == top else c for i, c in enumerate(cells)]
        lines.append("| " + " | ".join(cells + ([f"`{t.runs[n]}`"] if t.runs else [])) + " |")
    return "\n".join(lines) + "\n"


def write_csv(t: Table, path: Path) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(t.header + (["run"] if t.runs else []))
        w.writerows([["" if v is None else v for v in row] + ([t.runs[n]] if t.runs else [])
                     for n, row in enumerate(t.rows)])


def lr_curves(runs: list[Run], metric: str, out: Path,
              pruned: Optional[dict[tuple[str, str], set[float]]] = None) -> list[Path]:
    """Per model: each strategy's `metric` against the learning rate (the mean over seeds, 95% CI
    error bars), and the learning rates successive halving pruned ((model, strategy) -> lrs in
    `pruned`; they have no score) as crosses on the x axis in the strategy's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FixedLocator, NullLocator

    paths = []
    pruned = pruned or {}
    ref = [r for r in reference(runs) if metric in r.metrics]
    for model in sorted({r.model for r in ref} | {m for m, _ in pruned}):
        fig, ax = plt.subplots(figsize=(7.5, 4))
        mine = [r for r in ref if r.model == model]
        curves = {s: g for (s,), g in group(mine, lambda r: (r.strategy,)).items()}
        cut = {s: sorted(lrs) for (m, s), lrs in pruned.items() if m == model and lrs}
        for strategy in sorted(set(curves) | set(cut), key=_strategy_key):
            g = curves.get(strategy, [])
            lrs = sorted({r.lr for r in g})
            stats = [Stat.of([r.metrics[metric] for r in g if r.lr == lr]) for lr in lrs]
            yerr = [0.0 if math.isnan(st.half) else st.half for st in stats]  # 95% CI over seeds
            drawn = ax.errorbar(lrs, [float(st) for st in stats], yerr=yerr if any(yerr) else None, marker="o",
                                capsize=3, label=strategy)
            if strategy in cut:  # one row of crosses per strategy, just above the x axis
                row = 0.03 + 0.045 * sorted(cut, key=_strategy_key).index(strategy)
                ax.plot(cut[strategy], [row] * len(cut[strategy]), "x", color=drawn[0].get_color(), markersize=8,
                        mew=2, transform=ax.get_xaxis_transform(), clip_on=False)
        if cut:
            ax.plot([], [], "x", color="0.3", markersize=8, mew=2, label="pruned by halving\n(no score; colour =\nstrategy)")
        lrs = sorted({r.lr for r in mine} | {x for v in cut.values() for x in v})
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(lrs))  # a tick at every swept lr, none between
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{x:g}" for x in lrs], rotation=45 if len(lrs) > 4 else 0, ha="right" if len(lrs) > 4 else "center")
        ax.set(xlabel="learning rate (log scale)", ylabel=metric_label(metric),
               title=f"{model}: {metric_label(metric)} per learning rate"
               + (" (mean ± 95% CI over seeds)" if any(r.seed for r in mine) else ""))
        ax.grid(alpha=0.3)
        ax.legend(title="strategy", loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize=8)
        paths.append(out / f"lr_curves_{model}.png")
        save_figure(fig, paths[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    return paths


def pruned_points(client, experiment_ids: list[str]) -> dict[tuple[str, str], set[float]]:
    """(model, strategy) -> the learning rates of the reference runs successive halving pruned."""
    out: dict[tuple[str, str], set[float]] = {}
    for r in client.runs(experiment_ids, "tags.`halving/state` = 'pruned'"):
        t = r.data.tags
        if t.get("stage") == "instruct" and not t.get("variant") and not t.get("kind"):
            out.setdefault((t.get("model", "?"), t.get("strategy", "?")), set()).add(float(t.get("lr", "nan")))
    return out


def metric_label(metric: str) -> str:
    """`eval/flickr30k_cider` -> "Flickr30k CIDEr" (the table's column name and unit), else the key."""
    names = {m: c for c, m in BENCH_COLS} | {"params/percent": "trainable %", "perf/peak_mem_gb": "peak memory (GB)"}
    name = names.get(metric, metric)
    return name + (" CIDEr" if metric.endswith("_cider") else "")


PAPER_PAIR = ("finetune", "layernorm")  # the paper's Fig. 3 and Fig. 4 compare these two


def paper_figures(client, runs: list[Run], metric: str, out: Path) -> list[Path]:
    """Fig. 3 (layer-similarity heatmaps) and Fig. 4 (the same norm's gradients) of finetune and
    LayerNorm side by side on one scale, from the best reference runs' `analysis/*.npz`."""
    import tempfile

    import numpy as np

    from mmln.analysis import GRADS_FILE, SIMILARITY_FILE, load_grads, load_similarity
    from mmln.analysis.figures import grads_side_by_side, similarity_side_by_side

    paths = []
    for model in sorted({r.model for r in runs}):
        mats, grads = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for (m, strategy), g in group(reference(runs), lambda r: (r.model, r.strategy)).items():
                if m != model or strategy not in PAPER_PAIR:
                    continue
                run, _ = best(g, metric)
                label = f"{strategy} (lr {run.lr:g})"
                for name in (SIMILARITY_FILE, GRADS_FILE):
                    try:
                        local = client.download(run.run_id, f"analysis/{name}", f"{tmp}/{strategy}")
                    except Exception:  # this run recorded no such analysis
                        continue
                    if name == SIMILARITY_FILE and "token" in (sim := load_similarity(local)):
                        mats[label] = sim["token"]
                    elif name == GRADS_FILE:
                        grads[label] = load_grads(local)
        if mats:
            paths.append(similarity_side_by_side(mats, out / f"fig3_similarity_{model}.png",
                                                 f"{model}: layer similarity (lower = more expressive)"))
        shared = sorted(set.intersection(*(set(a) for _, a in grads.values()))) if grads else []
        steps = set.intersection(*(set(np.asarray(s).tolist()) for s, _ in grads.values())) if grads else set()
        if shared and steps:
            param = shared[0]
            paths.append(grads_side_by_side({k: (s, a[param]) for k, (s, a) in grads.items()}, param,
                                            out / f"fig4_ln_grads_{model}.png", model))
    return paths


def data_type_bars(t: Table, metric: str, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    col = [c for c, m in BENCH_COLS if m == metric]
    if not has_data(t) or not col:
        return []
    i = t.header.index(col[0])
    paths = []
    for model in sorted({row[0] for row in t.rows}):
        rows = [r for r in t.rows if r[0] == model and r[i] is not None]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.bar([f"{r[1]}\n{r[2]}" for r in rows], [r[i] for r in rows])
        ax.set(ylabel=metric, title=f"{model}: data types")
        ax.tick_params(axis="x", labelsize=7)
        fig.tight_layout()
        paths.append(out / f"data_types_{model}.png")
        save_figure(fig, paths[-1], dpi=120)
        plt.close(fig)
    return paths


def analysis_figures(client, runs: list[Run], metric: str, out: Path) -> list[Path]:
    """The `analysis/` PNGs of each (model, strategy)'s best reference run, copied into `out/analysis/`."""
    paths = []
    for (model, strategy), g in group(reference(runs), lambda r: (r.model, r.strategy)).items():
        run, _ = best(g, metric)
        pngs = [a.path for a in _artifacts(client, run.run_id, "analysis") if a.path.endswith(".png")]
        for p in pngs:
            dst = out / "analysis" / f"{model}-{strategy}"
            dst.mkdir(parents=True, exist_ok=True)
            paths.append(client.download(run.run_id, p, dst))
    return paths


def _artifacts(client, run_id: str, path: str) -> list:
    try:
        found = client.list_artifacts(run_id, path)
    except Exception:  # no such folder / artifact store unreachable: nothing to copy
        return []
    return [x for a in found for x in (_artifacts(client, run_id, a.path) if a.is_dir else [a])]


# ---------------------------------------------------------------------------------------- main
ROW_RULE = ("each row's run: among FINISHED runs of the same model, strategy, lr, variant, data and vision "
            "encoder, a run of the reference config (`--config`) first, then a full evaluation (no `eval.limit`), "
            "then the newest; the `run` column names it (`[eval.limit]` / `[other config: ...]` mark the exceptions)")


def report(client, experiments: list[str], out: Path, metric: str = DEFAULT_METRIC,
           tables: list[str] = TABLES, references: Optional[dict[str, dict[str, str]]] = None
           ) -> tuple[dict[str, Table], list[Path]]:
    """Build the tables (and figures) and write them into `out`; (tables by key, files written).
    `references`: model name -> flattened reference config (`reference_params`), for `Run.rank`."""
    out = Path(out).resolve()  # MLflow hands back absolute paths; a relative `out` could not name them
    ids = []
    for name in experiments:
        exp = client.find_experiment(name)
        if exp is None:
            known = ", ".join(client.experiment_names()) or "none"
            raise LookupError(f"no MLflow experiment '{name}' (experiments: {known})")
        ids.append(exp.experiment_id)
    runs = load_runs(client, ids, references)
    out.mkdir(parents=True, exist_ok=True)
    built = {k: BUILDERS[k](runs, metric) for k in tables if k in BUILDERS}
    files = []
    md = [f"# Report: {', '.join(experiments)}", "",
          f"{len(runs)} finished stage-2 runs; best learning rate by {metric} (higher is better); "
          "`*` = no run of the group has that metric (newest run shown); `-` = not measured.", "",
          f"Rows: {ROW_RULE}" + ("" if references else " (no `--config` given: every run counts as the reference's)")
          + ".", ""]
    long = {}
    if "paired" in tables:
        built["paired"], long["paired"] = paired_tables(client, runs, metric)
    for key, t in built.items():
        md.append(markdown(t, bold_max=key == "tableA1"))
        if has_data(t):
            write_csv(long.get(key, t), out / f"{key}.csv")
            files.append(out / f"{key}.csv")
    if "figures" in tables:
        figs = lr_curves(runs, metric, out, pruned_points(client, ids)) + paper_figures(client, runs, metric, out) + \
            analysis_figures(client, runs, metric, out)
        if "table3" in built:
            figs += data_type_bars(built["table3"], metric, out)
        md += ["### Figures", ""] + ([f"- `{p.relative_to(out)}`" for p in figs] or ["No figures (no data)."])
        files += figs
    write_text(out / "report.md", "\n".join(md) + "\n")
    return built, [out / "report.md"] + files


def log_report(client, experiment: str, scope: str, out: Path) -> str:
    """Log `out` as the artifacts (`report/`) of the experiment's `report` run for this scope."""
    from mmln.tracking import Tags

    exp_id = client.experiment_id(experiment)
    found = client.runs([exp_id], f"tags.{Tags.KIND} = 'report' and tags.report_scope = '{scope}'", limit=1)
    run_id = found[0].info.run_id if found else client.start_run(
        exp_id, "report", {Tags.KIND: "report", "report_scope": scope})
    client.log_artifacts(run_id, str(out), artifact_path="report" if out.name == "report" else f"report/{out.name}")
    client.end(run_id, "FINISHED")
    return run_id


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmln.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", action="append", default=[],
                    help="MLflow experiment name(s), comma-separated or repeated (default: --config's experiment)")
    ap.add_argument("--config", action="append", default=[],
                    help="reference run config(s), one per model (repeatable): rows prefer runs of this config, "
                         "and the experiment defaults to its tracking.experiment")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of every --config (as the runs were given)")
    ap.add_argument("--out", help="output folder (default: outputs/<experiment>/report)")
    ap.add_argument("--tables", default=",".join(TABLES), help="subset of %(default)s")
    ap.add_argument("--select-metric", default=DEFAULT_METRIC, help="picks each strategy's best lr (default: %(default)s)")
    ap.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    ap.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    ap.add_argument("--open", action="store_true",
                    help="then serve the MLflow UI on 127.0.0.1:--port and print links to the experiment and to its "
                         "strategies x learning rates side by side (MLflow's compare page); Ctrl-C stops it")
    ap.add_argument("--port", type=int, default=5000, help="port of --open's UI (default: %(default)s)")
    args = ap.parse_args(argv)
    from mmln.config import ConfigError, load_config
    from mmln.fit import experiment_name
    from mmln.base.outputs import DiskFullError, OutputError, replacing
    from mmln.tracking import Tracker, tracking_uri
    experiments = [e for x in args.experiment for e in x.split(",") if e]
    tables = [t for t in args.tables.split(",") if t]
    if set(tables) - set(TABLES):
        ap.error(f"--tables: choose from {','.join(TABLES)}")
    try:
        references = reference_params([(c, args.overrides) for c in args.config]) if args.config else None
        experiments = experiments or list(dict.fromkeys(
            experiment_name(load_config(c, args.overrides), c) for c in args.config))
    except ConfigError as e:
        print(f"mmln.report: error: {e}", file=sys.stderr)
        return 2
    if not experiments:
        ap.error("give --experiment NAME or --config CFG")
    out = (Path(args.out) if args.out else Path("outputs") / "+".join(experiments) / "report").resolve()
    uri = tracking_uri(args.tracking_uri)
    client = Tracker(uri)
    try:
        with replacing(out, "report") as tmp:  # built beside --out (refused if not mmln's), manifest last, swapped in
            built, files = report(client, experiments, tmp, args.select_metric, tables, references)
    except (LookupError, OutputError, DiskFullError) as e:  # no such experiment; --out not mmln's; a full disk
        print(f"mmln.report: error: {e.args[0] if isinstance(e, LookupError) else e}", file=sys.stderr)
        return 2
    for t in built.values():
        print(markdown(t, bold_max=t.key == "tableA1"))
    run = "" if args.no_log else f"; MLflow run {log_report(client, experiments[0], '+'.join(experiments), out)}"
    print(f"report: {out / 'report.md'} ({len(files)} files){run}")
    if args.open:
        return open_ui(client, uri, experiments, references, args.port)
    return 0


def open_ui(client, uri: str, experiments: list[str], references, port: int) -> int:
    """Serve the dashboard and print where the comparison is (until Ctrl-C)."""
    from mmln.tracking import serve_ui, ui_links

    exp = client.find_experiment(experiments[0])
    runs = sorted(reference(load_runs(client, [exp.experiment_id], references)), key=lambda r: (_strategy_key(r.strategy), -r.lr))
    links = ui_links(f"http://127.0.0.1:{port}", exp.experiment_id, [r.run_id for r in runs])
    proc = serve_ui(uri, port)
    print(f"MLflow UI on http://127.0.0.1:{port} (Ctrl-C stops it)\n  experiment '{experiments[0]}': {links['experiment']}\n"
          f"  its {len(runs)} runs (strategies x learning rates) side by side: {links['compare']}", flush=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=20)
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
