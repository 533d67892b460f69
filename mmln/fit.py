"""python -m mmln.fit --config conf/<run>.yaml [key=value ...]

Trains one run, stage 1 (`stage: pretrain`, the connector) or stage 2 (`stage: instruct`, a tuning
strategy), into `outputs/<experiment>/<run>/`:

    config.yaml               the resolved config
    params.json               total / trainable parameters (the paper's accounting)
    checkpoints/last.ckpt     trainable tensors + optimizer, scheduler, loop and RNG state (resume=auto)
    trainable.safetensors     the trained tensors, at the end
    mm_projector.bin          stage 1: the connector in LLaVA's format
    efficiency.json           tokens/s, samples/s, step time, peak memory

and tracks it in MLflow (params = the flattened config; metrics = loss, lr, perf/*; artifacts).
A run is FINISHED only once all of that was written; one that raises is FAILED with its error (a
non-finite step also names the step), one stopped by SIGTERM / SIGINT saves a resumable checkpoint
and is KILLED; the process then exits non-zero.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from mmln.config import ConfigError, flatten, load_config, to_yaml
from mmln.base.io import OutputError, as_disk_full, write_text
from mmln.model.errors import CheckpointError, MissingWeightsError
from mmln.lit.trainer import (epoch_end_resume, fail_at, lightning_strategy, pause_at, precision,  # noqa: F401 (API)
                               step_checkpoint, world_size)
from mmln.run.resume import is_rank0, prior_run_id, resolve_resume
from mmln.base.progress import quiet_third_party
from mmln.tracking import SweepContext


@dataclass
class RunResult:
    run_dir: Path
    run_id: Optional[str]
    experiment: str
    run_name: str
    metrics: dict
    total_steps: int = 0  # the run's full schedule (optimizer steps)
    paused_at: Optional[int] = None  # `stop_at` paused it there (checkpoints/last.ckpt continues it)


def preflight(cfg) -> None:
    """Every local path the run needs, checked before anything heavy; all problems in one message."""
    from mmln.model.llm import check_llm_dir, gguf_location

    problems = []
    v = cfg.model.vision
    if v.path and not Path(v.path).exists():
        problems.append(f"model.vision.path: '{v.path}' does not exist (a local CLIP / timm checkpoint directory)")
    if cfg.model.llm.path:
        try:
            check_llm_dir(cfg.model.llm.path)
        except MissingWeightsError as e:
            problems.append(str(e))
    tok = cfg.model.llm.tokenizer or cfg.model.llm.path
    if not tok or not (Path(tok).is_dir() or gguf_location(tok)):
        problems.append(f"model.llm.tokenizer: '{tok}' is not a directory with the tokenizer files "
                        "(set model.llm.tokenizer, or model.llm.path to the LLM directory that holds them)")
    c = cfg.model.connector.path
    if c and not Path(c).is_file():
        problems.append(f"model.connector.path: '{c}' not found (stage 1's mm_projector.bin or trainable.safetensors; "
                        "run the stage-1 config first, or unset it to start from a random connector)")
    for f in cfg.data.train.files:
        if not Path(f).is_file():
            problems.append(f"data.train.files: '{f}' not found")
    if not cfg.data.train.files:
        problems.append("data.train.files: no training file configured")
    if problems:
        raise MissingWeightsError.from_problems(problems)


def experiment_name(cfg, config_path: Optional[str]) -> str:
    return cfg.tracking.experiment or (Path(config_path).stem if config_path else "mmln")


def run_name(cfg) -> str:
    return cfg.run_name or f"{cfg.tune.strategy}-lr{cfg.train.lr:g}"


def run_tags(cfg, experiment: str, sweep_id: str = "") -> dict[str, str]:
    """A training run's own tags (`mmln.tracking.Tags`)."""
    from mmln.tracking import Tags

    types = ",".join(cfg.data.train.types) or "all"
    return {Tags.MODEL: cfg.model.name, Tags.STRATEGY: cfg.tune.strategy, Tags.STAGE: cfg.stage,
            Tags.LR: f"{cfg.train.lr:g}", Tags.DATA_SUBSET: f"{types}:{cfg.data.train.limit or 'all'}",
            Tags.CONFIG_FAMILY: experiment, Tags.SWEEP_ID: sweep_id}


@dataclass
class RunPlan:
    """Where a run goes and how it starts: a function of the config and the run folder's state."""
    experiment: str
    name: str
    run_dir: Path
    resume: Optional[str]  # the checkpoint it continues from, or None to start fresh
    uri: str  # the MLflow tracking URI it logs to
    quiet: bool

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"


@dataclass
class RunParts:
    """What a run trains: the model, its tuning strategy's counts, the data and the LightningModule."""
    counts: object
    dm: object
    module: object
    total: int  # optimizer steps of the full schedule
    pause: Optional[int]  # `stop_at` pauses the run there


def fit(cfg, config_path: Optional[str] = None, stop_at: Optional[Callable[[int], int]] = None,
        sweep: Optional[SweepContext] = None) -> RunResult:
    """Train `cfg`, in four named steps: plan, build, assemble, execute. `stop_at(total_steps)`
    (successive halving's rungs): pause after that many optimizer steps of the full run's schedule;
    the run is then left KILLED, not exported, and continues exactly from `checkpoints/last.ckpt` on
    the next call. `sweep` (mmln.sweep): the sweep's id and the tags its points carry from the run's
    creation on."""
    plan = plan_run(cfg, config_path)
    parts = build_parts(cfg, plan, stop_at)
    logger, tracker = open_tracking(cfg, plan, parts, sweep)
    trainer, efficiency, stopper = assemble_trainer(cfg, plan, parts, logger)
    return execute(cfg, plan, parts, trainer, logger, tracker, efficiency, stopper)


def quiet_libraries() -> None:
    """Only mmln's own lines (`mmln.base.progress.quiet_third_party`): Lightning's banner and tips, MLflow's
    INFO lines and download bars, DeepSpeed's accelerator guess, transformers' bars, known-harmless warnings."""
    os.environ["MMLN_QUIET"] = "1"  # cfg.quiet too: the run's evaluations and downloads are quiet as well
    quiet_third_party()


def plan_run(cfg, config_path: Optional[str]) -> RunPlan:
    """Step 1, plan: check every local path, name the run and its folder, decide whether it resumes
    (moving stale checkpoints aside under `resume=never`), and find a reachable tracking store
    (`tracking.offline=true`: a local one) — all before any model loads."""
    import torch

    from mmln.tracking import TrackingUnreachable, check_reachable, offline_uri, tracking_uri

    quiet = cfg.quiet or os.environ.get("MMLN_QUIET") == "1"
    if quiet:
        quiet_libraries()
    preflight(cfg)
    # the DataModule, not the DataLoader, carries the mid-epoch position (see mmln.lit.datamodule)
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # the frozen vision tower, on purpose
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")  # Lightning 2.6 on torch 2.14
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+; a no-op on CPU
    experiment, name = experiment_name(cfg, config_path), run_name(cfg)
    run_dir = Path(cfg.output_dir) / experiment / name
    resume = resolve_resume(cfg, run_dir)
    uri = tracking_uri(cfg.tracking.uri)
    try:
        check_reachable(uri)  # seconds, before any model loads
    except TrackingUnreachable as e:
        if not cfg.tracking.offline:
            raise
        uri = offline_uri(cfg.output_dir)
        print(f"warning: {e}; tracking.offline=true: logging to {uri} instead "
              f"(browse it with `mlflow ui --backend-store-uri {uri}`)", file=sys.stderr)
    return RunPlan(experiment, name, run_dir, resume, uri, quiet)


def build_parts(cfg, plan: RunPlan, stop_at: Optional[Callable[[int], int]]) -> RunParts:
    """Step 2, build: the tokenizer (its chat template checked), the model with its tuning strategy
    (`mmln.run.build.build_model`, as every command builds it), the data and the LightningModule, seeded
    by `train.seed`."""
    import lightning as L

    from mmln.run.build import build_model
    from mmln.data import BadSampleLog
    from mmln.data.templates import missing_chat_template
    from mmln.lit.datamodule import MMLNDataModule
    from mmln.lit.module import module_for
    from mmln.model.llm import load_tokenizer
    from mmln.tuning import count_params

    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    tokenizer = load_tokenizer(cfg.model.llm)
    if problem := missing_chat_template(cfg.data.template, tokenizer):
        raise ConfigError(problem)  # before any model is built, not from the first batch
    mllm = build_model(cfg)  # seeds train.seed again, as every command that rebuilds this model does
    counts = count_params(mllm)
    dm = MMLNDataModule(cfg, tokenizer, num_image_tokens=getattr(mllm.vision, "num_patches", None))
    dm.setup("fit", world_size=world_size(cfg))
    if dm.steps_per_epoch == 0:
        raise ConfigError(f"{dm.num_train} training samples make no full global batch of "
                          f"train.global_batch_size={cfg.train.global_batch_size}: lower it or add data")
    total = cfg.train.max_steps if cfg.train.max_steps > 0 else dm.steps_per_epoch * cfg.train.epochs
    module = module_for(cfg, mllm, total)
    pause = stop_at(total) if stop_at is not None else None
    pause = pause if pause is not None and pause < total else None
    module.bad_log = BadSampleLog()
    return RunParts(counts, dm, module, total, pause)


def open_tracking(cfg, plan: RunPlan, parts: RunParts, sweep: Optional[SweepContext]):
    """Step 3a: the run's MLflow logger (continuing the folder's earlier run when it resumes) and its
    Tracker; the run folder's config.yaml, params.json and mlflow_run_id; runs of this folder that a
    kill left RUNNING are closed."""
    from mmln.tracking import Tags, Tracker, make_logger

    prior = prior_run_id(plan.run_dir) if plan.resume else None
    sweep_tags = dict(sweep.tags) if sweep else {}
    tags = {**run_tags(cfg, plan.experiment, sweep.sweep_id if sweep else ""), Tags.RUN_DIR: str(plan.run_dir.resolve())}
    logger = make_logger(plan.experiment, plan.name, plan.uri, {**tags, **sweep_tags}, run_id=prior)
    tracker = Tracker.of_logger(logger)
    if prior is not None and sweep_tags:  # a continued run was created before (maybe by another sweep)
        tracker.set_tags(logger.run_id, sweep_tags)
    if prior is None:
        logger.log_hyperparams({k: ("" if v is None else v) for k, v in flatten(cfg).items()})
    if is_rank0():
        c = parts.counts
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(plan.run_dir / "config.yaml", to_yaml(cfg))
        params = {"strategy": cfg.tune.strategy, "total": c.total, "trainable": c.trainable,
                  "percent": c.percent, "groups": c.groups}
        write_text(plan.run_dir / "params.json", json.dumps(params, indent=1))
        write_text(plan.run_dir / "mlflow_run_id", logger.run_id)
        tracker.close_orphans(logger.experiment_id, logger.run_id, str(plan.run_dir.resolve()))  # left RUNNING by a kill
    return logger, tracker


def run_callbacks(cfg, plan: RunPlan, parts: RunParts):
    """The run's callbacks: last.ckpt every `train.save_every_n_steps` (and at a pause), efficiency,
    the analyses, a progress bar unless quiet, the debug hooks, the non-finite guard and the signal
    stopper. Returns (callbacks, efficiency, stopper)."""
    from mmln.callbacks.analysis import analysis_callbacks
    from mmln.callbacks.efficiency import Efficiency
    from mmln.lit.safety import NonFiniteGuard, StopOnSignal

    # a paused run's last.ckpt is the one of the pause step (a divisor of it), never the end-of-training one
    every = cfg.train.save_every_n_steps if parts.pause is None else math.gcd(cfg.train.save_every_n_steps, parts.pause)
    efficiency = Efficiency()
    callbacks = [step_checkpoint(dirpath=plan.ckpt_dir, save_last=True, save_top_k=0,  # last.ckpt only
                                 enable_version_counter=False, every_n_train_steps=every, save_on_exception=False),
                 efficiency, epoch_end_resume(), *analysis_callbacks(cfg, plan.run_dir)]
    from mmln.callbacks.progress import StepBoundedProgressBar, StepCounter  # the bar's total respects max_steps

    callbacks.append(StepCounter(parts.total))  # `step k/n, ETA` for heartbeats (the quiet demo's)
    if not plan.quiet:
        callbacks.append(StepBoundedProgressBar(refresh_rate=1))
    if cfg.debug.fail_at_step:
        callbacks.append(fail_at(cfg.debug.fail_at_step))
    if cfg.debug.pause_at_steps:
        callbacks.append(pause_at(cfg.debug.pause_at_steps, plan.run_dir))
    stopper = StopOnSignal(plan.ckpt_dir / "last.ckpt")
    callbacks += [NonFiniteGuard(cfg.train.nonfinite, cfg.train.nonfinite_limit,
                                 check_grads=not precision(cfg).startswith("16")), stopper]
    return callbacks, efficiency, stopper


def assemble_trainer(cfg, plan: RunPlan, parts: RunParts, logger):
    """Step 3b, assemble: the Lightning Trainer with the run's callbacks, logger, distributed strategy
    and precision. Returns (trainer, efficiency callback, signal stopper)."""
    import lightning as L

    from mmln.lit.safety import SafeCheckpointIO

    callbacks, efficiency, stopper = run_callbacks(cfg, plan, parts)
    strategy, dm = lightning_strategy(cfg), parts.dm
    trainer = L.Trainer(
        accelerator=cfg.train.accelerator, devices=cfg.train.devices, num_nodes=cfg.train.num_nodes,
        strategy=strategy, precision=precision(cfg),
        plugins=[] if "deepspeed" in type(strategy).__name__.lower() else [SafeCheckpointIO()],
        max_epochs=cfg.train.epochs, max_steps=cfg.train.max_steps if parts.pause is None else parts.pause,
        accumulate_grad_batches=dm.accumulation, gradient_clip_val=cfg.train.grad_clip or None,
        logger=logger, callbacks=callbacks, log_every_n_steps=cfg.train.log_every_n_steps,
        enable_progress_bar=not plan.quiet, enable_model_summary=False, num_sanity_val_steps=0,
        use_distributed_sampler=False, default_root_dir=str(plan.run_dir),
        val_check_interval=cfg.train.val_every_n_steps * dm.accumulation if cfg.train.val_every_n_steps else None,
        limit_val_batches=1.0 if dm.has_val else 0,
    )
    return trainer, efficiency, stopper


def execute(cfg, plan: RunPlan, parts: RunParts, trainer, logger, tracker, efficiency, stopper) -> RunResult:
    """Step 4, execute: train, then write the run's outputs; the run is FINISHED only once all were
    written, FAILED with its error (a non-finite step also names the step) if anything raised, KILLED
    when a signal stopped it (after a resumable checkpoint) or when `stop_at` paused it."""
    from mmln.lit.safety import NonFiniteError, RunInterrupted, StopRequested
    from mmln.tracking import Tags

    try:
        tracker.set_tags(logger.run_id, {Tags.NOTE: f"run dir: {plan.run_dir.resolve()}"})
        t0 = time.time()
        trainer.fit(parts.module, datamodule=parts.dm, ckpt_path=plan.resume, weights_only=True)
        stopper.raise_if_stopped()  # a signal during the last step
        if parts.pause is not None:
            logger.end("KILLED")  # paused, not finished: a sweep decides whether it continues
            return RunResult(plan.run_dir, logger.run_id, plan.experiment, plan.name, {}, parts.total,
                             trainer.global_step)
        done = plan.run_dir / "efficiency.json"
        if plan.resume and efficiency.steps == 0 and done.is_file():  # a finished run again: nothing trained
            metrics = json.loads(done.read_text())  # its outputs and figures stay, not a no-op's
            print(f"fit: {plan.run_dir} had finished (its checkpoint is at step {trainer.global_step}): nothing "
                  "trained, its outputs kept (resume=never starts over)", file=sys.stderr)
        else:
            metrics = write_outputs(cfg, plan, parts, trainer, logger, tracker, efficiency, time.time() - t0)
    except BaseException as e:  # the run is FINISHED only when everything above was written
        if isinstance(e, StopRequested):
            e = RunInterrupted(e.signum, e.step, e.ckpt)
        failure = {Tags.ERROR: f"{type(e).__name__}: {e}"[:5000]}
        if isinstance(e, NonFiniteError):
            failure |= {Tags.FAILED_STEP: str(e.step), Tags.FAILURE_REASON: e.reason[:5000]}
        tracker.set_tags(logger.run_id, failure)
        killed = isinstance(e, KeyboardInterrupt) or stopper.received is not None
        logger.end("KILLED" if killed else "FAILED")
        if isinstance(e, RunInterrupted):
            raise e from None
        raise
    tracker.clear_failure(logger.run_id)  # a resumed attempt that finished: the failed one's error tags go
    logger.end("FINISHED")
    return RunResult(plan.run_dir, logger.run_id, plan.experiment, plan.name, metrics, parts.total)


def write_outputs(cfg, plan: RunPlan, parts: RunParts, trainer, logger, tracker, efficiency, wall: float) -> dict:
    """The end of a finished run: trainable.safetensors (and stage 1's mm_projector.bin), efficiency.json
    and the final metrics, logged as artifacts (or references past `tracking.artifact_max_mb`)."""
    c, module = parts.counts, parts.module
    metrics = {**efficiency.summary, "train/wall_s": wall, "params/trainable": c.trainable,
               "params/total": c.total, "params/percent": c.percent,
               **{f"params/trainable_{g}": n for g, n in c.groups.items()},
               "data/bad_samples": float(module.bad_log.total),
               # the run's scale (mmln.report labels results below a threshold "smoke scale: not evidence")
               "train/steps": float(trainer.global_step),
               "train/samples_seen": float(trainer.global_step * cfg.train.global_batch_size)}
    if trainer.is_global_zero:
        for path in module.export(plan.run_dir):
            if path.is_file():
                tracker.log_file_or_reference(logger.run_id, path, int(cfg.tracking.artifact_max_mb * 2**20))
        write_text(plan.run_dir / "efficiency.json", json.dumps(metrics, indent=1))
        for f in ("config.yaml", "params.json", "efficiency.json"):
            tracker.log_artifact(logger.run_id, str(plan.run_dir / f))
        logger.log_metrics(metrics, step=trainer.global_step)
        if module.bad_log.total:
            tracker.log_text(logger.run_id, module.bad_log.summary(), "bad_samples.txt")
    return metrics


def error_line(e: BaseException) -> Optional[tuple[str, int]]:
    """(the one line, the exit code) for an error a user can act on: bad input (2; no traceback: the line
    names it), a non-finite loss or an unreachable tracking server (1), a full disk (2: the run is FAILED
    with it, and resumable). None for anything else: a bug, whose traceback is shown."""
    if isinstance(e, (ConfigError, MissingWeightsError, FileNotFoundError, CheckpointError, OutputError)):
        return f"error: {e}", 2
    from mmln.data.dataset import BadSampleError  # these errors live with torch-importing modules
    from mmln.data.records import DataError
    from mmln.lit.safety import NonFiniteError
    from mmln.tracking import TrackingUnreachable

    if isinstance(e, (NonFiniteError, TrackingUnreachable)):
        return f"error: {e}", 1
    if (full := as_disk_full(e)) is not None or isinstance(e, (DataError, BadSampleError)):
        return f"error: {full or e}", 2
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmln.fit", description="Train one mmln run from a config.")
    ap.add_argument("--config", required=True, help="run config YAML, e.g. conf/vicuna7b_ln.yaml")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. tune.strategy=lora train.lr=1e-4")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides, require=("model", "data", "resume"))
        result = fit(cfg, args.config)
    except Exception as e:
        if (said := error_line(e)) is None:
            raise
        print(said[0], file=sys.stderr)
        return said[1]
    except KeyboardInterrupt as e:
        from mmln.lit.safety import RunInterrupted

        if isinstance(e, RunInterrupted):
            print(f"stopped: {e}", file=sys.stderr)
            return 128 + e.signum  # what a shell reports for a process ended by that signal
        raise
    print(f"run: {result.run_dir}  (MLflow experiment '{result.experiment}', run '{result.run_name}', "
          f"id {result.run_id}); review with `make ui`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
