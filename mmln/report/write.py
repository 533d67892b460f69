"""Writing a report: cells formatted, tables as Markdown and CSV, `report()` (every table and
figure of the experiments into one folder) and `log_report` (that folder as a `report` run's
artifacts)."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Optional

from mmln.base.io import atomic_path, write_text
from mmln.report.figures import analysis_figures, data_type_bars, lr_curves, paper_figures
from mmln.report.paired import Diff, paired_tables
from mmln.report.rows import Run, Stat, load_runs, load_untuned, pruned_points
from mmln.report.scale import Evidence, scale_note
from mmln.report.tables import BUILDERS, Table, add_baselines, has_data
from mmln.eval.selection import DEFAULT_METRIC


TABLES = ["table1", "table2", "table3", "table4", "table5", "table6", "tableA1", "paired", "figures"]


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


def markdown(t: Table, bold_max: bool = False) -> str:
    if not has_data(t):
        return f"### {t.title}\n\nNo data: {t.empty or 'no matching runs'}.\n"
    header = t.header + (["run"] if t.runs else [])
    lines = [f"### {t.title}", ""] + ([f"_{t.scale}._", ""] if t.scale else []) + [
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
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


ROW_RULE = ("each row's run: among FINISHED runs of the same model, strategy, lr, variant, data and vision "
            "encoder, a run of the reference config (`--config`) first, then a full evaluation (no `eval.limit`), "
            "then the newest; the `run` column names it (`[eval.limit]` / `[other config: ...]` mark the exceptions)")


def table_scales(built: dict[str, Table], runs: list[Run], untuned: list[Run], evidence: Evidence) -> None:
    """Each table's `scale`: the scale of the runs its rows came from (all reference runs for Table A1)."""
    by_label = {r.label: r for r in runs + untuned}
    for t in built.values():
        used = [by_label[x] for label in t.runs for x in label.split(" vs ") if x in by_label]
        t.scale = scale_note(used or [r for r in runs if not r.variant], evidence)


def report(client, experiments: list[str], out: Path, metric: str = DEFAULT_METRIC,
           tables: list[str] = TABLES, references: Optional[dict[str, dict[str, str]]] = None,
           evidence: Evidence = Evidence()) -> tuple[dict[str, Table], list[Path]]:
    """Build the tables (and figures) and write them into `out`; (tables by key, files written).
    `references`: model name -> flattened reference config (`reference_params`), for `Run.rank`;
    `evidence`: below it, tables and figures say "smoke scale: not evidence"."""
    out = Path(out).resolve()  # MLflow hands back absolute paths; a relative `out` could not name them
    ids = []
    for name in experiments:
        exp = client.find_experiment(name)
        if exp is None:
            known = ", ".join(client.experiment_names()) or "none"
            raise LookupError(f"no MLflow experiment '{name}' (experiments: {known})")
        ids.append(exp.experiment_id)
    runs, untuned = load_runs(client, ids, references), load_untuned(client, ids)
    out.mkdir(parents=True, exist_ok=True)
    built = {k: BUILDERS[k](runs, metric) for k in tables if k in BUILDERS}
    if "table1" in built:
        add_baselines(built["table1"], untuned)
    md = [f"# Report: {', '.join(experiments)}", "",
          f"{len(runs)} finished stage-2 runs; best learning rate by {metric} (higher is better); "
          "`*` = no run of the group has that metric (newest run shown); `-` = not measured.", "",
          f"Rows: {ROW_RULE}" + ("" if references else " (no `--config` given: every run counts as the reference's)")
          + ".", ""] + ([f"**{scale_note(runs, evidence)}.**", ""] if runs else [])
    long = {}
    if "paired" in tables:
        built["paired"], long["paired"] = paired_tables(client, runs, metric)
    table_scales(built, runs, untuned, evidence)
    files = []
    for key, t in built.items():
        md.append(markdown(t, bold_max=key == "tableA1"))
        if has_data(t):
            write_csv(long.get(key, t), out / f"{key}.csv")
            files.append(out / f"{key}.csv")
    if "figures" in tables:
        captions: dict[Path, str] = {}
        figs = lr_curves(runs, metric, out, pruned_points(client, ids), lambda rs: scale_note(rs, evidence), captions) \
            + paper_figures(client, runs, metric, out, evidence, captions) \
            + analysis_figures(client, runs, metric, out, evidence, captions)
        if "table3" in built:
            figs += data_type_bars(built["table3"], metric, out, captions)
        md += ["### Figures", ""] + ([f"- `{p.relative_to(out)}`" + (f": {captions[p]}" if captions.get(p) else "")
                                      for p in figs] or ["No figures (no data)."])
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
