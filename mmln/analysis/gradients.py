"""LayerNorm gradient statistics (paper Fig. 4, A3, A4). Pure torch/numpy.

A recorded gradient is one norm parameter's full gradient vector at one optimizer step. Per
vector: `variance` across its entries (population variance, ddof=0), `mean`, `norm` (L2).
`GradientRecord` keeps the sampled vectors and writes them to one .npz file: an int64 array
`step` (optimizer steps, 0-based) and, per parameter, a float32 array (len(step), numel) under
the parameter's name (e.g. `layers.10.input_layernorm.weight`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
from torch import nn

from mmln.base.io import atomic_path
from mmln.model.layout import is_norm

STATS = ("var", "mean", "norm")


def grad_stats(g: torch.Tensor) -> torch.Tensor:
    """(variance across entries, mean, L2 norm) of a gradient, in fp32, on its device (no sync)."""
    g = g.detach().float().flatten()
    return torch.stack([g.var(correction=0), g.mean(), g.norm()])


def metric_key(name: str) -> str:
    """MLflow keeps only [A-Za-z0-9_/. -] in metric names; anything else becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_/. -]", "_", name)


def resolve_params(decoder: nn.Module, wanted: Iterable[str]) -> tuple[dict[str, nn.Parameter], list[str]]:
    """Module paths inside the LLM decoder (e.g. `layers.10.input_layernorm`, or `all` = every
    norm of the decoder) -> ({`<path>.<param>`: parameter}, paths not found)."""
    wanted = list(wanted)
    modules = dict(decoder.named_modules())
    if "all" in wanted:
        wanted = [n for n, m in modules.items() if n and is_norm(m)] + [w for w in wanted if w != "all"]
    params: dict[str, nn.Parameter] = {}
    missing = []
    for path in dict.fromkeys(wanted):
        module = modules.get(path)
        if module is None:
            missing.append(path)
            continue
        for pname, p in module.named_parameters(recurse=False):
            params[f"{path}.{pname}"] = p
    return params, missing


class GradientRecord:
    """Sampled gradient vectors over steps, kept on the CPU in float32."""

    def __init__(self):
        self.steps: list[int] = []
        self.vectors: dict[str, list[np.ndarray]] = {}

    def add(self, step: int, grads: dict[str, np.ndarray]) -> None:
        if self.vectors and set(grads) != set(self.vectors):
            raise ValueError(f"recorded parameters changed: {sorted(grads)} vs {sorted(self.vectors)}")
        self.steps.append(int(step))
        for name, g in grads.items():
            self.vectors.setdefault(name, []).append(np.asarray(g, dtype=np.float32).ravel())

    def arrays(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return np.asarray(self.steps, dtype=np.int64), {n: np.stack(v) for n, v in self.vectors.items()}

    def variance_means(self) -> dict[str, float]:
        """Per parameter, the mean over recorded steps of the variance across entries (the summary)."""
        return {n: float(np.mean([v.astype(np.float64).var() for v in vs])) for n, vs in self.vectors.items()}

    def keep_before(self, step: int) -> None:
        """Drop records at or after `step` (resuming from a checkpoint taken at `step`)."""
        keep = [i for i, s in enumerate(self.steps) if s < step]
        self.steps = [self.steps[i] for i in keep]
        self.vectors = {n: [v[i] for i in keep] for n, v in self.vectors.items()}

    def save(self, path: str | Path) -> Path:
        steps, arrays = self.arrays()
        with atomic_path(path) as tmp:
            np.savez_compressed(tmp, step=steps, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "GradientRecord":
        rec = cls()
        steps, arrays = load_grads(path)
        rec.steps = steps.tolist()
        rec.vectors = {n: list(a) for n, a in arrays.items()}
        return rec


def load_grads(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(steps (S,), {param name: (S, numel) float32}) from an ln_grads.npz."""
    with np.load(path) as z:
        return z["step"], {k: z[k] for k in z.files if k != "step"}


def variances(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per parameter, the variance across entries at each recorded step: (S,)."""
    return {n: a.astype(np.float64).var(axis=1) for n, a in arrays.items()}


def to_numpy(grads: dict[str, Optional[torch.Tensor]]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Gradients on any device -> (vectors, stats) on the CPU with a single device->host copy."""
    names = [n for n, g in grads.items() if g is not None]
    if not names:
        return {}, {}
    flat = [grads[n].detach().float().flatten() for n in names]
    stats = torch.stack([grad_stats(g) for g in flat])
    sizes = [g.numel() for g in flat]
    host = torch.cat([stats.flatten(), *flat]).cpu().numpy()
    stats_np, rest = host[: 3 * len(names)].reshape(len(names), 3), host[3 * len(names):]
    vectors = dict(zip(names, np.split(rest, np.cumsum(sizes)[:-1])))
    return vectors, {n: s for n, s in zip(names, stats_np)}
