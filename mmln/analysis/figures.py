"""Figures of the analyses (PNG). Matplotlib's object API with the Agg canvas: no pyplot, no global
backend switch, safe in training processes and headless machines.

- `similarity_heatmap`   L x L layer-similarity matrix (paper Fig. 3 style)
- `grad_variance`        variance of each recorded norm gradient over steps (log scale)
- `grad_histograms`      ridgeline of the gradient entries' histograms over steps (paper Fig. 4 style)
- `comparison`           two runs side by side: both heatmaps and both variance curves
- `similarity_side_by_side`, `grads_side_by_side`  the paper's Fig. 3 and Fig. 4 (runs side by side, one scale)
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mmln.analysis.similarity import off_diagonal_mean
from mmln.base.io import save_figure


def _evenly(n: int, k: int) -> list[int]:
    """At most `k` indices spread evenly over range(n), first and last included."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int)).tolist() if n else []


def _save(fig: Figure, path: str | Path, caption: str = "") -> Path:
    """Save at 120 dpi; a `caption` is written under the figure and kept in the PNG's `Description`."""
    if caption:
        fig.text(0.5, 0.0, caption, ha="center", va="top", fontsize="small", wrap=True)
    return save_figure(fig, path, dpi=120, bbox_inches="tight", **({"metadata": {"Description": caption}} if caption else {}))


def _heatmap(ax: Axes, matrix: Optional[np.ndarray], title: str, vmin: Optional[float] = None):
    if matrix is None:
        ax.text(0.5, 0.5, "no layer-similarity data", ha="center", va="center")
        ax.set_axis_off()
        ax.set_title(title)
        return None
    im = ax.imshow(matrix, vmin=vmin, vmax=1.0, cmap="viridis", origin="upper")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    ax.set_title(f"{title}\noff-diagonal mean {off_diagonal_mean(matrix):.3f}")
    return im


def _variance_curves(ax: Axes, steps: np.ndarray, var: dict[str, np.ndarray], label: str = "", **kw) -> None:
    for name, v in var.items():
        ax.plot(steps, v, marker=".", label=f"{label}{name}", **kw)
    if var and all((v > 0).all() for v in var.values()):
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("variance of gradient entries")


def similarity_heatmap(matrix: np.ndarray, path: str | Path, title: str = "layer similarity") -> Path:
    fig = Figure(figsize=(5, 4.2))
    ax = fig.subplots()
    fig.colorbar(_heatmap(ax, matrix, title), ax=ax, label="cosine similarity")
    return _save(fig, path)


def grad_variance(steps: np.ndarray, var: dict[str, np.ndarray], path: str | Path,
                  title: str = "LayerNorm gradient variance") -> Path:
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    _variance_curves(ax, steps, var)
    ax.set_title(title if len(var) <= 16 else f"{title} ({len(var)} parameters)")
    if len(var) <= 16:
        ax.legend(fontsize="small", ncol=1 + (len(var) > 8))
    return _save(fig, path)


def grad_histograms(steps: np.ndarray, arrays: dict[str, np.ndarray], path: str | Path,
                    max_rows: int = 20, bins: int = 60, max_panels: int = 8) -> Path:
    """One panel per parameter (at most `max_panels`, evenly chosen); each ridge is the histogram
    of the vector's entries at one step (at most `max_rows` steps, evenly chosen)."""
    names = list(arrays)
    names = [names[i] for i in _evenly(len(names), max_panels)]
    cols = min(len(names), 4) or 1
    n_rows = -(-len(names) // cols) or 1
    fig = Figure(figsize=(4.2 * cols, 5.5 * n_rows))
    axes = np.atleast_1d(fig.subplots(n_rows, cols)).ravel()
    rows = _evenly(len(steps), max_rows)
    for ax in axes[len(names):]:
        ax.set_axis_off()
    for ax, name in zip(axes, names):
        a = arrays[name]
        lim = float(np.nanpercentile(np.abs(a), 99.5)) or 1e-12
        _ridges(ax, steps, a, rows, np.linspace(-lim, lim, bins + 1))
        ax.set_title(name, fontsize="small")
    return _save(fig, path)


def _ridges(ax: Axes, steps: np.ndarray, a: np.ndarray, rows: list[int], edges: np.ndarray) -> None:
    """One ridge per chosen step: the histogram of the gradient's entries (bins `edges`)."""
    centers = (edges[:-1] + edges[1:]) / 2
    for k, i in enumerate(rows[::-1]):  # latest step at the top, drawn first so earlier ridges overlap it
        y = len(rows) - 1 - k
        h, _ = np.histogram(a[i], bins=edges)  # entries beyond the edges fall outside
        h = h / max(h.max(), 1) * 1.6
        color = (0.1 + 0.8 * y / max(len(rows) - 1, 1), 0.3, 0.9 - 0.7 * y / max(len(rows) - 1, 1))
        ax.fill_between(centers, y, y + h, color=color, alpha=0.55, lw=0.6, edgecolor="k", zorder=len(rows) - y)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([str(int(steps[i])) for i in rows], fontsize="x-small")
    ax.set_ylabel("optimizer step")
    ax.set_xlabel("gradient entry")
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))


def similarity_side_by_side(mats: dict[str, np.ndarray], path: str | Path, title: str, caption: str = "") -> Path:
    """The paper's Fig. 3: one layer-similarity heatmap per run (e.g. finetune, LayerNorm), side by
    side on one colour scale (the lowest value of any of them to 1) with one colour bar; `caption` under it."""
    fig = Figure(figsize=(4.6 * len(mats) + 1.2, 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(mats)))
    vmin = min(float(np.nanmin(m)) for m in mats.values())
    im = None
    for ax, (label, m) in zip(axes, mats.items()):
        im = _heatmap(ax, m, label, vmin) or im
    fig.colorbar(im, ax=list(axes), label="cosine similarity", shrink=0.9)
    fig.suptitle(title)
    return _save(fig, path, caption)


def grads_side_by_side(runs: dict[str, tuple[np.ndarray, np.ndarray]], param: str, path: str | Path, title: str,
                       max_rows: int = 16, bins: int = 60, caption: str = "") -> Path:
    """The paper's Fig. 4: the gradient of the same norm parameter in each run (label -> (steps,
    (S, D) entries)) side by side, over the same steps (those every run recorded) on one x scale;
    `caption` under it."""
    common = sorted(set.intersection(*(set(int(x) for x in s) for s, _ in runs.values())))
    chosen = [common[i] for i in _evenly(len(common), max_rows)]
    picked = {label: (np.array(chosen), a[[list(map(int, s)).index(c) for c in chosen]]) for label, (s, a) in runs.items()}
    lim = max(float(np.nanpercentile(np.abs(a), 99.5)) for _, a in picked.values()) or 1e-12
    edges = np.linspace(-lim, lim, bins + 1)
    fig = Figure(figsize=(4.8 * len(runs), 5.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(runs), sharex=True, sharey=True))
    for ax, (label, (steps, a)) in zip(axes, picked.items()):
        _ridges(ax, steps, a, list(range(len(steps))), edges)
        ax.set_title(f"{label}\nvariance (mean over steps) {float(np.nanmean(a.var(axis=1))):.3g}", fontsize="small")
    fig.suptitle(f"{title}: gradient of {param}")
    return _save(fig, path, caption)


def comparison(a: dict, b: dict, path: str | Path) -> Path:
    """`a`, `b`: {"name", "similarity": (L, L) or None, "steps", "variance": {param: (S,)}} of two runs."""
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    ax_a, ax_b, ax_v = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.4]})
    mats = [m for m in (a["similarity"], b["similarity"]) if m is not None]
    vmin = min(float(np.nanmin(m)) for m in mats) if mats else None
    im = None
    for ax, run, tag in ((ax_a, a, "A"), (ax_b, b, "B")):
        im = _heatmap(ax, run["similarity"], f"{tag}: {run['name']}", vmin) or im
    if im is not None:
        fig.colorbar(im, ax=ax_b, label="cosine similarity")
    for run, tag, style in ((a, "A", "-"), (b, "B", "--")):
        if run["variance"]:
            _variance_curves(ax_v, run["steps"], run["variance"], label=f"{tag}: ", linestyle=style)
    if a["variance"] or b["variance"]:
        ax_v.legend(fontsize="x-small")
    else:
        ax_v.text(0.5, 0.5, "no gradient data", ha="center", va="center")
    ax_v.set_title("LayerNorm gradient variance")
    return _save(fig, path)
