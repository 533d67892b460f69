"""Planning a sweep: the grid of points (strategy x learning rate x training seed), each with its
loaded and validated config, its identity (`config_hash`) and its run folder; the sweep's id and
name. Pure: nothing here trains, tracks or writes."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from mmln.config import ConfigError, load_config
from mmln.base.constants import MAX_IMAGE_ASPECT, MAX_IMAGE_PIXELS, MAX_PADDED_PIXELS
from mmln.eval.selection import DEFAULT_METRIC

VOLATILE = ("resume", "quiet", "data.num_workers", "debug")  # keys that do not change what a run computes
# keys added to the schema after sweeps were first hashed, at the value that computes what runs did
# before them: left out of the hash at that value, so an upgrade does not retrain a finished sweep
ADDED_LATER = {"data.max_image_pixels": MAX_IMAGE_PIXELS, "data.max_image_aspect": MAX_IMAGE_ASPECT,
               "data.max_padded_pixels": MAX_PADDED_PIXELS, "tune.vision_norms": False, "train.group_lr.vision_norms": None}
DEFAULT_BENCH = ["flickr30k"]


@dataclass
class Point:
    index: int
    strategy: str
    lr: float
    name: str
    overrides: list[str]
    cfg: Any
    hash: str
    run_dir: Path
    variant: str = ""
    seed: Optional[int] = None  # --seeds: this point's train.seed (None: the config's own, one seed)
    status: str = "pending"  # skipped | trained | evaluated | done (--summarize) | failed | missing
    run_id: Optional[str] = None
    value: Optional[float] = None
    error: str = ""


def config_hash(cfg) -> str:
    """SHA-256 (16 hex) of the resolved config without the `VOLATILE` keys (and the `ADDED_LATER`
    ones at their old-behaviour value)."""
    data = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    for key in (*VOLATILE, *ADDED_LATER):
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node.get(p) or {}
        if key in VOLATILE or (leaf in node and node[leaf] == ADDED_LATER[key]):
            node.pop(leaf, None)
    text = OmegaConf.to_yaml(OmegaConf.create(json.loads(json.dumps(data, sort_keys=True, default=str))))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_point_overrides(specs: list[str]) -> list[tuple[dict[str, str], list[str]]]:
    """`"lr=1e-3,strategy=lora:debug.fail_at_step=1 train.max_steps=2"` -> ({lr, strategy}, [overrides])."""
    out = []
    for spec in specs:
        sel, sep, rest = spec.partition(":")
        selector = dict(s.split("=", 1) for s in sel.split(",") if "=" in s)
        if not sep or not rest.split() or set(selector) - {"lr", "strategy"} or not selector:
            raise ConfigError(f"--point-overrides {spec!r}: expected 'lr=X[,strategy=S]:key=value [key=value ...]'")
        out.append((selector, rest.split()))
    return out


def matches(selector: dict[str, str], strategy: str, lr: float) -> bool:
    if "strategy" in selector and selector["strategy"] != strategy:
        return False
    return "lr" not in selector or math.isclose(float(selector["lr"]), lr, rel_tol=1e-9)


def plan(config: str, strategies: list[str], lrs: list[float], overrides: list[str],
         point_overrides: list[str] = (), variant: str = "", seeds: list[int] = ()) -> list[Point]:
    """Every grid point with its loaded, validated config (so a bad key fails before any run).
    `seeds`: each (strategy, lr) once per training seed, `train.seed=S`, named `...-seedS`."""
    from mmln.fit import experiment_name
    from mmln.tuning import REGISTRY

    unknown = [s for s in strategies if s not in REGISTRY]
    if unknown:
        raise ConfigError(f"unknown strategy {', '.join(unknown)}; registered: {', '.join(REGISTRY)}")
    per_point = parse_point_overrides(list(point_overrides))
    points, experiments = [], set()
    for strategy in strategies:
        for lr in lrs:
            for seed in list(seeds) or [None]:
                name = f"{variant + '-' if variant else ''}{strategy}-lr{lr:g}" + (f"-seed{seed}" if seed is not None else "")
                extra = [o for sel, ovr in per_point if matches(sel, strategy, lr) for o in ovr]
                ovr = [*overrides, f"tune.strategy={strategy}", f"train.lr={lr!r}", f"run_name={name}",
                       *([f"train.seed={seed}"] if seed is not None else []), *extra]
                cfg = load_config(config, ovr)
                experiments.add(experiment_name(cfg, config))
                points.append(Point(len(points), strategy, lr, name, ovr, cfg, config_hash(cfg),
                                    Path(cfg.output_dir) / experiment_name(cfg, config) / name, variant, seed))
    if len(experiments) > 1:
        raise ConfigError(f"the points of one sweep must share one experiment, got {sorted(experiments)}")
    return points


def check_select(metric: str, benches: list[str]) -> None:
    if metric.startswith("eval/") and not any(metric.startswith(f"eval/{b}") for b in benches):
        raise ConfigError(f"--select-metric {metric} comes from no benchmark in --bench {','.join(benches) or 'none'}: "
                          f"add its benchmark, or select by another metric (e.g. eval/<bench>_...)")


def has_bench(metrics: dict[str, float], bench: str) -> bool:
    return any(k.startswith(f"eval/{bench}") for k in metrics)


def sweep_id_of(points: list[Point], benches: list[str]) -> str:
    return hashlib.sha256(json.dumps([sorted(p.hash for p in points), benches]).encode()).hexdigest()[:8]


def sweep_name(model: str, strategies: list[str], n_lrs: int, variant: str = "") -> str:
    """What the parent run is called in the dashboard: `<model> <strategies> x <n> lrs`."""
    return f"{model}{' ' + variant if variant else ''} {','.join(strategies)} x {n_lrs} lr{'s' if n_lrs != 1 else ''}"
