"""The report's figures: the LR curves, the paper's Fig. 3 and Fig. 4 (finetune and LayerNorm
side by side), Table 3 as bars (the paper's Fig. 2), and the `analysis/` PNGs of each strategy's
best run."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

from mmln.base.io import save_figure
from mmln.report.rows import Run, Stat, best, group, reference, strategy_key
from mmln.report.scale import Evidence, caption, grads_verdict, scale_note, similarity_verdict
from mmln.report.tables import BENCH_COLS, Table, has_data


def save_captioned(fig, path: Path, text: str, captions: Optional[dict[Path, str]] = None, **kwargs) -> Path:
    """Save `fig` with `text` written under it and kept in the PNG's `Description`; `captions[path] = text`."""
    if text:
        fig.text(0.5, 0.0, text, ha="center", va="top", fontsize=8, wrap=True)
    save_figure(fig, path, dpi=120, bbox_inches="tight", **({"metadata": {"Description": text}} if text else {}))
    if captions is not None:
        captions[path] = text
    return path


def lr_curves(runs: list[Run], metric: str, out: Path,
              pruned: Optional[dict[tuple[str, str], set[float]]] = None,
              note: Optional[Callable[[list[Run]], str]] = None, captions: Optional[dict[Path, str]] = None
              ) -> list[Path]:
    """Per model: each strategy's `metric` against the learning rate (the mean over seeds, 95% CI
    error bars), and the learning rates successive halving pruned ((model, strategy) -> lrs in
    `pruned`; they have no score) as crosses on the x axis in the strategy's colour. `note(runs)`:
    the caption under a model's figure (e.g. its runs' scale), also put in `captions`."""
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
        for strategy in sorted(set(curves) | set(cut), key=strategy_key):
            g = curves.get(strategy, [])
            lrs = sorted({r.lr for r in g})
            stats = [Stat.of([r.metrics[metric] for r in g if r.lr == lr]) for lr in lrs]
            yerr = [0.0 if math.isnan(st.half) else st.half for st in stats]  # 95% CI over seeds
            drawn = ax.errorbar(lrs, [float(st) for st in stats], yerr=yerr if any(yerr) else None, marker="o",
                                capsize=3, label=strategy)
            if strategy in cut:  # one row of crosses per strategy, just above the x axis
                row = 0.03 + 0.045 * sorted(cut, key=strategy_key).index(strategy)
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
        paths.append(save_captioned(fig, out / f"lr_curves_{model}.png", note(mine) if note else "", captions))
        plt.close(fig)
    return paths


def metric_label(metric: str) -> str:
    """`eval/flickr30k_cider` -> "Flickr30k CIDEr" (the table's column name and unit), else the key."""
    names = {m: c for c, m in BENCH_COLS} | {"params/percent": "trainable %", "perf/peak_mem_gb": "peak memory (GB)"}
    name = names.get(metric, metric)
    return name + (" CIDEr" if metric.endswith("_cider") else "")


PAPER_PAIR = ("finetune", "layernorm")  # the paper's Fig. 3 and Fig. 4 compare these two


def pair_analyses(client, runs: list[Run], metric: str, model: str) -> tuple[list[Run], dict, dict]:
    """(the runs, label -> similarity matrix, label -> (steps, grads)) of the best reference run of each
    `PAPER_PAIR` strategy of `model` (label "<strategy> (lr <lr>)"), from their `analysis/*.npz`."""
    import tempfile

    from mmln.analysis import GRADS_FILE, SIMILARITY_FILE, load_grads, load_similarity

    used, mats, grads = [], {}, {}
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
                used.append(run)
                if name == SIMILARITY_FILE and "token" in (sim := load_similarity(local)):
                    mats[label] = sim["token"]
                elif name == GRADS_FILE:
                    grads[label] = load_grads(local)
    return list({r.run_id: r for r in used}.values()), mats, grads


def paper_figures(client, runs: list[Run], metric: str, out: Path, evidence: Evidence = Evidence(),
                  captions: Optional[dict[Path, str]] = None) -> list[Path]:
    """Fig. 3 (layer-similarity heatmaps) and Fig. 4 (the same norm's gradients) of finetune and
    LayerNorm side by side on one scale, from the best reference runs' `analysis/*.npz`; each caption
    gives the runs' scale and says where the figure's data contradict the paper (`mmln.report.scale`)."""
    import numpy as np

    from mmln.analysis.figures import grads_side_by_side, similarity_side_by_side

    paths = []
    captions = {} if captions is None else captions
    for model in sorted({r.model for r in runs}):
        used, mats, grads = pair_analyses(client, runs, metric, model)
        scale = scale_note(used, evidence)
        if mats:
            path = out / f"fig3_similarity_{model}.png"
            captions[path] = caption(scale, similarity_verdict(mats))
            paths.append(similarity_side_by_side(mats, path, f"{model}: layer similarity (lower = more expressive)",
                                                 caption=captions[path]))
        shared = sorted(set.intersection(*(set(a) for _, a in grads.values()))) if grads else []
        steps = set.intersection(*(set(np.asarray(s).tolist()) for s, _ in grads.values())) if grads else set()
        if shared and steps:
            param = shared[0]
            var = {label.split(" ")[0]: float(np.nanmean(a[param][np.isin(np.asarray(s), list(steps))].var(axis=1)))
                   for label, (s, a) in grads.items()}
            path = out / f"fig4_ln_grads_{model}.png"
            captions[path] = caption(scale, grads_verdict(var) and f"{grads_verdict(var)} (mean over the "
                                     f"{len(steps)} steps both recorded)")
            paths.append(grads_side_by_side({k: (s, a[param]) for k, (s, a) in grads.items()}, param, path, model,
                                            caption=captions[path]))
    return paths


def data_type_bars(t: Table, metric: str, out: Path, captions: Optional[dict[Path, str]] = None) -> list[Path]:
    """Table 3 as bars, one figure per model, captioned with the table's scale (`Table.scale`)."""
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
        paths.append(save_captioned(fig, out / f"data_types_{model}.png", t.scale, captions))
        plt.close(fig)
    return paths


def analysis_figures(client, runs: list[Run], metric: str, out: Path, evidence: Evidence = Evidence(),
                     captions: Optional[dict[Path, str]] = None) -> list[Path]:
    """The `analysis/` PNGs of each (model, strategy)'s best reference run, copied into `out/analysis/`
    (as the run drew them: their caption, in `captions`, is the run's scale)."""
    paths = []
    for (model, strategy), g in group(reference(runs), lambda r: (r.model, r.strategy)).items():
        run, _ = best(g, metric)
        pngs = [a.path for a in _artifacts(client, run.run_id, "analysis") if a.path.endswith(".png")]
        for p in pngs:
            dst = out / "analysis" / f"{model}-{strategy}"
            dst.mkdir(parents=True, exist_ok=True)
            paths.append(client.download(run.run_id, p, dst))
            if captions is not None:
                captions[paths[-1]] = scale_note([run], evidence)
    return paths


def _artifacts(client, run_id: str, path: str) -> list:
    try:
        found = client.list_artifacts(run_id, path)
    except Exception:  # no such folder / artifact store unreachable: nothing to copy
        return []
    return [x for a in found for x in (_artifacts(client, run_id, a.path) if a.is_dir else [a])]
