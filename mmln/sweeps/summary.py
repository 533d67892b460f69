"""After the points: each point's run and metric read back from MLflow, the best learning rate per
strategy (`mmln.eval.selection.best_lr`, the rule the report shares), the parent run's summary (metrics,
tags, `sweep.json`, the comparison table and LR curves), the final benchmarks at the best points,
and the text printed at the end."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from mmln.base.io import write_text
from mmln.sweeps.plan import Point, has_bench
from mmln.sweeps.point import point_lock, say
from mmln.tracking import Tags


def lr_scores(points: list[Point]) -> dict[str, dict[float, list[float]]]:
    """strategy -> lr -> the metric of each of its seeds' points (those that have it)."""
    out: dict[str, dict[float, list[float]]] = {}
    for p in points:
        out.setdefault(p.strategy, {}).setdefault(p.lr, [])
        if p.value is not None:
            out[p.strategy][p.lr].append(p.value)
    return out


def summarize(points: list[Point], client, exp_id: str, metric: str) -> dict[str, Point]:
    """Fill every point's run and metric from MLflow; the best point per strategy (`pick_best`)."""
    for p in points:
        run = client.finished_run(exp_id, p.hash)
        if run is not None and metric in run.data.metrics:
            p.run_id, p.value = run.info.run_id, run.data.metrics[metric]
            p.status = "done" if p.status == "pending" else p.status
        elif p.status not in ("failed", "pruned"):  # pruned: successive halving stopped it on purpose
            cut = client.search_runs([exp_id], f"tags.config_hash = '{p.hash}' and tags.`halving/state` = 'pruned'",
                                     max_results=1)  # by an earlier halving sweep (--summarize)
            p.status = "pruned" if cut else "missing"
            p.run_id = cut[0].info.run_id if cut else p.run_id
            p.error = None if cut else p.error or f"no FINISHED run with {metric}"
    return pick_best(points, metric)


def pick_best(points: list[Point], metric: str) -> dict[str, Point]:
    """Per strategy, a point of its best learning rate (`mmln.eval.selection.best_lr`: the best mean over
    seeds, lowest for a loss, tie: the higher lr); of that lr's seeds, the best-scoring one."""
    from mmln.eval.selection import best_lr, higher_is_better

    sign = 1.0 if higher_is_better(metric) else -1.0
    best = {}
    for strategy, scores in lr_scores(points).items():
        lr = best_lr(scores, sign > 0)
        if lr is not None:
            at = [p for p in points if p.strategy == strategy and p.lr == lr and p.value is not None
                  and not math.isnan(p.value)]
            best[strategy] = max(at, key=lambda p: sign * p.value)
    return best


def log_summary(client, parent_id: str, points: list[Point], best: dict[str, Point], metric: str) -> None:
    from mmln.eval.selection import mean_ci

    m: dict[str, float] = {}
    scores, means = lr_scores(points), {}
    for s, p in best.items():
        means[s], half, n = mean_ci(scores[s][p.lr])
        m |= {f"best_lr/{s}": p.lr, f"best_{metric}/{s}": means[s]}
        m |= {f"best_{metric}_ci95/{s}": half, f"best_n_seeds/{s}": n} if n > 1 else {}
        client.set_tags(parent_id, {f"best_lr/{s}": f"{p.lr:g}", f"best_run/{s}": p.run_id})
    if best:
        from mmln.eval.selection import higher_is_better

        sign = 1.0 if higher_is_better(metric) else -1.0
        top = max(best, key=lambda s: (sign * means[s], best[s].lr))
        m[f"best_{metric}"] = means[top]
    failed = [p for p in points if p.status in ("failed", "missing")]
    m |= {"sweep/n_points": len(points), "sweep/n_failed": len(failed)}
    client.log_metrics(parent_id, m)
    rows = [{"index": p.index, "strategy": p.strategy, "lr": p.lr, "seed": p.seed, "run_name": p.name, "run_id": p.run_id,
             "config_hash": p.hash, "status": p.status, metric: p.value, "error": p.error} for p in points]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.json"
        write_text(path, json.dumps({"select_metric": metric, "points": rows,
                                     "best": {s: p.index for s, p in best.items()}}, indent=1))
        client.log_artifact(parent_id, str(path))
        client.log_artifacts(parent_id, str(comparison(points, best, metric, Path(tmp) / "comparison",
                                                                 points_scale(client, points))), "comparison")


def points_scale(client, points: list[Point]) -> str:
    """The scale of the points' finished runs (optimizer steps, samples seen, eval.limit) and, below
    the report's default threshold, "smoke scale: not evidence" (`mmln.report.scale`)."""
    from mmln.report.rows import Run, run_scale
    from mmln.report.scale import Evidence, scale_note

    runs = []
    for p in points:
        finished = p.run_id and p.status not in ("pruned", "failed", "missing")  # a pruned run stopped early
        found = client.find_run(p.run_id) if finished else None
        if found is not None:
            d = found.data
            run = Run(p.run_id, "", p.strategy, p.lr, "", "", "", 0, dict(d.metrics),
                      eval_limit=d.tags.get("eval_limit", "none") or "none")
            run.steps, run.samples = run_scale(run.metrics, d.params)
            runs.append(run)
    return scale_note(runs, Evidence())


def comparison(points: list[Point], best: dict[str, Point], metric: str, out: Path, scale: str = "") -> Path:
    """The parent's at-a-glance view: `comparison.md` (strategies x learning rates, Table A1's
    shape, best per strategy in bold, each cell's run; `scale` under its title) and the report's
    LR-curve PNG (`scale` its caption)."""
    from mmln.report import Run, lr_curves

    out.mkdir(parents=True, exist_ok=True)
    lrs = sorted({p.lr for p in points}, reverse=True)
    strategies = list(dict.fromkeys(p.strategy for p in points))
    lines = [f"# {metric} per strategy x learning rate", ""] + ([f"_{scale}._", ""] if scale else []) + ["| strategy | " + " | ".join(f"{x:g}" for x in lrs) + " |",
             "|---|" + "---|" * len(lrs)]
    from mmln.eval.selection import mean_ci

    scores = lr_scores(points)
    for s in strategies:
        cells = []
        for lr in lrs:
            at = [q for q in points if q.strategy == s and q.lr == lr]
            mean, half, n = mean_ci(scores.get(s, {}).get(lr, []))
            v = "-" if n == 0 else f"{mean:.4g}" + (f" ± {half:.2g}" if n > 1 else "")
            v = "pruned" if n == 0 and at and all(q.status == "pruned" for q in at) else v
            cells.append(f"**{v}**" if s in best and best[s].lr == lr else v)
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "mean ± 95% CI over seeds where there are several; pruned = stopped by successive halving"]
    lines += ["", "runs: " + ", ".join(f"{p.name} = {p.run_id}" for p in points if p.run_id)]
    write_text(out / "comparison.md", "\n".join(lines) + "\n")
    model = points[0].cfg.model.name if points else "?"
    pruned = {(model, p.strategy): {q.lr for q in points if q.strategy == p.strategy and q.status == "pruned"}
              for p in points}
    lr_curves([Run(p.run_id or "", model, p.strategy, p.lr, "", "", "", p.index, {metric: p.value},
                   seed="" if p.seed is None else str(p.seed)) for p in points if p.value is not None], metric, out, pruned,
              (lambda runs: scale) if scale else None)
    return out


def report_text(points: list[Point], best: dict[str, Point], metric: str, header: str) -> str:
    counts = {s: sum(p.status == s for p in points)
              for s in ("trained", "evaluated", "skipped", "done", "pruned", "failed", "missing")}
    lines = [header + ": " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
    for p in points:
        value = "-" if p.value is None else f"{p.value:.4g}"
        lines.append(f"  {p.name:32s} {p.status:9s} {metric}={value:8s} run {p.run_id or '-'}")
    from mmln.eval.selection import mean_ci

    scores = lr_scores(points)
    for s, p in best.items():
        mean, half, n = mean_ci(scores[s][p.lr])
        value = f"{mean:.4g}" + (f" +- {half:.2g} (95% CI, {n} seeds)" if n > 1 else "")
        lines.append(f"best {s}: lr={p.lr:g} ({metric}={value}, run {p.run_id})")
    return "\n".join(lines)


def run_final_benches(best: dict[str, Point], client, benches: list[str]) -> list[str]:
    """Evaluate each strategy's best point on `benches` it lacks; the names of points that failed."""
    from mmln.evaluate import evaluate

    failed = []
    for p in best.values():
        missing = [b for b in benches if not has_bench(client.get_run(p.run_id).data.metrics, b)]
        if not missing:
            continue
        say(f"[{p.index}] {p.name}: best {p.strategy} point, evaluating {','.join(missing)}")
        try:
            with point_lock(p):
                evaluate(p.cfg, str(p.run_dir / "trainable.safetensors"), missing, p.run_dir / "eval", run_id=p.run_id)
        except Exception as e:
            client.set_tags(p.run_id, {Tags.EVAL_ERROR: f"{type(e).__name__}: {e}"[:5000]})
            say(f"[{p.index}] {p.name}: final evaluation FAILED: {type(e).__name__}: {e}")
            failed.append(p.name)
    return failed
