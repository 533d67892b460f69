"""Running one point of a sweep, the one point runner that the grid search (`mmln.sweeps.grid`, also
a SLURM array task) and successive halving (`mmln.sweeps.halving`) both call: decide what the point
needs from the store (skip | evaluate | train), move a run folder of another config aside, train it
(`mmln.fit`, optionally paused at a rung), evaluate it, and tag it as the sweep's child. A point is
worked on under its lock (`point_lock`): a second sweep that reaches it waits, then finds it done."""
from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from mmln.base.io import write_text
from mmln.base.locks import exclusive
from mmln.sweeps.plan import Point, config_hash, has_bench
from mmln.tracking import SweepContext, Tags


def say(msg: str) -> None:
    """A progress line of the sweep, on stderr."""
    print(f"[sweep {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class SweepRun:
    """What every point of one sweep shares: the store (`client`, a mmln.tracking.Tracker) and its
    experiment, the parent run, the sweep id, the benchmarks evaluated at every point, the selection
    metric and the config file."""
    client: Any
    exp_id: str
    parent_id: Optional[str]
    sweep_id: str
    benches: list[str]
    metric: str
    config_path: str


def point_lock(p: Point):
    """Held while a point trains, evaluates or is scored: a second sweep reaching it waits, then
    finds it done (mmln.base.locks; beside the run folder, which a point may move aside)."""
    return exclusive(p.run_dir.parent / ".locks" / f"{p.run_dir.name}.lock",
                     say=lambda msg: say(f"[{p.index}] {p.name}: {msg}"))


def parent_run(client, exp_id: str, sweep_id: str, create: bool, params: dict[str, Any], tags: dict[str, str]):
    runs = client.runs([exp_id], f"tags.{Tags.SWEEP_ID} = '{sweep_id}' and tags.{Tags.KIND} = 'sweep'", limit=1)
    if runs or not create:
        return runs[0].info.run_id if runs else None
    return client.start_run(exp_id, tags.pop("name", f"sweep-{sweep_id}"),
                            {Tags.KIND: "sweep", Tags.SWEEP_ID: sweep_id, **tags}, params)


def decide(p: Point, client, exp_id: str, benches: list[str], metric: str) -> tuple[str, Any]:
    """skip | evaluate | train, and the FINISHED run when there is one."""
    run = client.finished_run(exp_id, p.hash)
    if run is None:
        return "train", None
    m = run.data.metrics
    if metric in m and all(has_bench(m, b) for b in benches):
        return "skip", run
    id_file = p.run_dir / "mlflow_run_id"
    same_dir = id_file.is_file() and id_file.read_text().strip() == run.info.run_id
    if same_dir and (p.run_dir / "trainable.safetensors").is_file():
        return "evaluate", run
    return "train", None


def displaced(p: Point) -> Optional[str]:
    """When the point's run dir holds a run of *another* config: what training the point moves aside
    (`<dir> -> <dir>.replaced-<hash>`, naming the run), else None."""
    f = p.run_dir / "config_hash"
    old = f.read_text().strip() if f.is_file() else (
        config_hash(OmegaConf.load(p.run_dir / "config.yaml")) if (p.run_dir / "config.yaml").is_file() else None)
    if old is None or old == p.hash:
        return None
    id_file = p.run_dir / "mlflow_run_id"
    run = id_file.read_text().strip() if id_file.is_file() else "?"
    done = "finished" if (p.run_dir / "trainable.safetensors").is_file() else "unfinished"
    return f"{p.run_dir} ({done} run {run}, config {old[:8]}) -> {aside_dir(p, old)}"


def aside_dir(p: Point, old_hash: str) -> Path:
    return p.run_dir.with_name(f"{p.run_dir.name}.replaced-{old_hash[:8]}")


def prepare_run_dir(p: Point, client=None) -> None:
    """Write the point's hash into its run dir; move a run dir of another config aside first (said
    up front by `main`, listed by `--dry-run`; its MLflow run is tagged `moved_to`)."""
    f = p.run_dir / "config_hash"
    old = f.read_text().strip() if f.is_file() else (
        config_hash(OmegaConf.load(p.run_dir / "config.yaml")) if (p.run_dir / "config.yaml").is_file() else None)
    if old is not None and old != p.hash:
        aside = aside_dir(p, old)
        id_file = p.run_dir / "mlflow_run_id"
        shutil.rmtree(aside, ignore_errors=True)
        p.run_dir.rename(aside)
        say(f"{p.name}: {p.run_dir} held a run of another config; moved to {aside}")
        if client is not None and (aside / id_file.name).is_file():
            try:
                client.set_tags((aside / id_file.name).read_text().strip(), {Tags.MOVED_TO: str(aside)})
            except Exception:  # the old run is not in this store: the files moved all the same
                pass
    p.run_dir.mkdir(parents=True, exist_ok=True)
    write_text(f, p.hash + "\n")


def point_tags(p: Point, parent_id: Optional[str]) -> dict[str, str]:
    """What the sweep adds to fit's tags (model, strategy, stage, lr, data_subset, sweep_id, ...)."""
    tags = {Tags.CONFIG_HASH: p.hash, Tags.SWEEP_POINT: str(p.index)}
    tags |= {Tags.VARIANT: p.variant} if p.variant else {}
    return tags | ({Tags.PARENT: parent_id} if parent_id else {})


def adopt(client, run_id: str, parent_id: Optional[str], sweep_id: str) -> None:
    """A reused point shows under this sweep's parent too: it becomes the parent's child (its
    earlier sweeps stay listed in the `sweeps` tag)."""
    if not parent_id:
        return
    tags = client.get_run(run_id).data.tags
    seen = [s for s in tags.get(Tags.SWEEPS, tags.get(Tags.SWEEP_ID, "")).split(",") if s]
    client.set_tags(run_id, {Tags.SWEEPS: ",".join(dict.fromkeys(seen + [sweep_id])), Tags.PARENT: parent_id})


def run_point(p: Point, run: SweepRun, stop_at=None, extra_tags: Optional[dict[str, str]] = None) -> None:
    """Train (or continue) and evaluate one point. `stop_at` (successive halving): pause the
    training after `stop_at(total_steps)` steps; the point is then `paused`, not evaluated."""
    from mmln.fit import fit

    client = run.client
    action, done = decide(p, client, run.exp_id, run.benches, run.metric)
    tags = point_tags(p, run.parent_id) | (extra_tags or {})
    if action == "skip":
        p.status, p.run_id = "skipped", done.info.run_id
        say(f"[{p.index}] {p.name}: done before (run {p.run_id}), skipped")
        adopt(client, p.run_id, run.parent_id, run.sweep_id)
        return
    if action == "train":
        say(f"[{p.index}] {p.name}: training")
        prepare_run_dir(p, client)
        try:
            # the run carries the point's tags from its creation on (a continued one gets them again)
            result = fit(p.cfg, run.config_path, stop_at=stop_at, sweep=SweepContext(run.sweep_id, tags))
            p.run_id = result.run_id
        finally:
            id_file = p.run_dir / "mlflow_run_id"
            p.run_id = p.run_id or (id_file.read_text().strip() if id_file.is_file() else None)
        if result.paused_at is not None:
            p.status = "paused"
            return
    else:
        p.run_id = done.info.run_id
        adopt(client, p.run_id, run.parent_id, run.sweep_id)
    evaluate_missing(p, client, run.benches)
    p.status = "trained" if action == "train" else "evaluated"


def evaluate_missing(p: Point, client, benches: list[str]) -> None:
    """Evaluate the point's finished run on the benchmarks it lacks (a failure tags the run)."""
    from mmln.evaluate import evaluate

    missing = [b for b in benches if not has_bench(client.get_run(p.run_id).data.metrics, b)]
    if missing:
        say(f"[{p.index}] {p.name}: evaluating {','.join(missing)}")
        try:
            evaluate(p.cfg, str(p.run_dir / "trainable.safetensors"), missing, p.run_dir / "eval", run_id=p.run_id)
        except Exception as e:
            client.set_tags(p.run_id, {Tags.EVAL_ERROR: f"{type(e).__name__}: {e}"[:5000]})
            raise
