"""The rows of a report: the FINISHED stage-2 runs of the experiments (read through
`mmln.tracking.Tracker`, the only MLflow reader), one per (model, strategy, lr, variant, data,
vision, seed) by an explicit rule (`Run.rank`), grouped, and each group's best learning rate
(`mmln.eval.selection.best_lr`)."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional


STRATEGY_ORDER = ["finetune", "lora", "attn_qv", "attn_mlp", "layernorm", "layernorm_simple", "connector",
                  "layernorm_no_connector"]


ABLATION = ["layernorm", "connector", "layernorm_no_connector"]


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
    steps: Optional[float] = None  # optimizer steps trained (`mmln.report.scale`)
    samples: Optional[float] = None  # samples seen in them
    eval_limit: str = "none"  # tag eval_limit: items per benchmark, "none" = all
    baseline: bool = False  # the untuned model's evaluation (no training)

    @property
    def metrics_evaluated(self) -> bool:
        return any(k.startswith("eval/") for k in self.metrics)

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


def run_scale(metrics: dict[str, float], params: dict[str, str]) -> tuple[Optional[float], Optional[float]]:
    """(optimizer steps, samples seen): fit's `train/steps` / `train/samples_seen`, else from the params
    (`train.max_steps` when set, times `train.global_batch_size`); None when neither says."""
    steps = metrics.get("train/steps")
    if steps is None and (p := params.get("train.max_steps", "")).lstrip("-").isdigit() and int(p) > 0:
        steps = float(p)
    samples = metrics.get("train/samples_seen")
    batch = params.get("train.global_batch_size", "")
    if samples is None and steps is not None and batch.isdigit():
        samples = steps * int(batch)
    return steps, samples


def load_untuned(client, experiment_ids: list[str]) -> list[Run]:
    """Per model, the FINISHED evaluation of the untuned model (`mmln.evaluate --ckpt none`: tag
    `ckpt=none`, run `eval-<model>-untuned...`; an export's evaluation is `eval-<model>-export-...`):
    a full evaluation over a limited one, then the newest."""
    out: dict[str, Run] = {}
    for r in client.runs(experiment_ids, "attributes.status = 'FINISHED' and tags.ckpt = 'none'",
                         order_by=["attributes.start_time DESC"]):
        t = r.data.tags
        untuned = (r.info.run_name or "").startswith(f"eval-{t.get('model', '?')}-untuned")  # not an export's
        if t.get("kind") or not untuned or not any(k.startswith("eval/") for k in r.data.metrics):
            continue
        limit = t.get("eval_limit", "none")
        run = Run(r.info.run_id, t.get("model", "?"), "untuned", math.nan, "", "", "", r.info.start_time,
                  dict(r.data.metrics), name=r.info.run_name or "", limited=limit not in ("", "none"),
                  eval_limit=limit or "none", baseline=True, steps=0.0, samples=0.0)
        if run.model not in out or out[run.model].rank() < run.rank():
            out[run.model] = run
    return list(out.values())


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
                  mismatch=mismatch(p, (references or {}).get(model), variant),
                  eval_limit=t.get("eval_limit", "none") or "none")
        run.steps, run.samples = run_scale(run.metrics, p)
        key = (run.model, run.strategy, run.lr, run.variant, run.data, run.vision, run.seed)
        if key not in out or out[key].rank() < run.rank():
            out[key] = run
    return list(out.values())


def pruned_points(client, experiment_ids: list[str]) -> dict[tuple[str, str], set[float]]:
    """(model, strategy) -> the learning rates of the reference runs successive halving pruned."""
    out: dict[tuple[str, str], set[float]] = {}
    for r in client.runs(experiment_ids, "tags.`halving/state` = 'pruned'"):
        t = r.data.tags
        if t.get("stage") == "instruct" and not t.get("variant") and not t.get("kind"):
            out.setdefault((t.get("model", "?"), t.get("strategy", "?")), set()).add(float(t.get("lr", "nan")))
    return out


def strategy_key(s: str) -> tuple:
    return (STRATEGY_ORDER.index(s) if s in STRATEGY_ORDER else len(STRATEGY_ORDER), s)


def group(runs: list[Run], key: Callable[[Run], tuple]) -> dict[tuple, list[Run]]:
    out: dict[tuple, list[Run]] = {}
    for r in sorted(runs, key=lambda r: (r.model, strategy_key(r.strategy), key(r))):
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
