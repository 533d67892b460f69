"""Lightning callbacks of the analyses (docs/paper.md, "Analyses"): LayerNorm gradients and layer similarity.

`analysis_callbacks(cfg, run_dir)` builds them from `cfg.analysis`; metric names, file names and
what they hold are listed in `mmln.analysis`. Files go to `<run_dir>/analysis/` and, when the
trainer logs to MLflow, to the run's artifacts under `analysis/`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn

from mmln.analysis import GRADS_FILE, SIMILARITY_FILE, figures, similarity_metric
from mmln.analysis.gradients import GradientRecord, metric_key, resolve_params, to_numpy, variances
from mmln.analysis.similarity import (
    layer_similarity, llm_decoder, pick_indices, sample_batches, save_similarity, scalars,
)

BatchesFn = Callable[["object"], Iterable[dict]]  # trainer -> batches (input_ids, attention_mask, pixel_values)


def _deepspeed_engine(trainer):
    from lightning.pytorch.strategies import DeepSpeedStrategy  # does not import deepspeed

    return trainer.strategy.model if isinstance(trainer.strategy, DeepSpeedStrategy) else None


def log_artifacts(trainer, paths: Sequence[Path], artifact_path: str = "analysis") -> None:
    from lightning.pytorch.loggers import MLFlowLogger

    from mmln.tracking import Tracker

    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            tracker = Tracker.of_logger(logger)
            for p in paths:
                tracker.log_artifact(logger.run_id, str(p), artifact_path=artifact_path)


def _log_metrics(trainer, metrics: dict[str, float], step: int) -> None:
    metrics = {k: float(v) for k, v in metrics.items() if np.isfinite(v)}
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def _log_metric_rows(trainer, rows: list[tuple[int, int, dict[str, float]]]) -> None:
    """(step, timestamp ms, metrics) rows; to MLflow in one `log_batch` per 1000 values (one database
    write instead of one per step), to any other logger step by step."""
    from lightning.pytorch.loggers import MLFlowLogger

    from mmln.tracking import Tracker

    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            Tracker.of_logger(logger).log_metric_rows(logger.run_id, rows)
        else:
            for step, _, m in rows:
                logger.log_metrics(m, step=step)


class LayerNormGradients(Callback):
    """Every `every_n_steps` optimizer steps (steps 0, k, 2k, ...), record the gradient of the chosen
    norm parameters and log its variance / mean / L2 norm (`analysis/ln_grad_{var,mean,norm}/<param>`).

    The gradient recorded is the raw one the optimizer is about to apply: accumulated over all the
    micro-batches of the optimizer step (each micro-batch loss divided by the accumulation, as
    Lightning and DeepSpeed both do), averaged across ranks by DDP's all-reduce, unscaled by AMP's
    GradScaler when there is one, and taken BEFORE gradient clipping and before the step: it is
    read in `on_before_optimizer_step`, which Lightning runs before it clips.
    Under DeepSpeed that hook runs on every micro-batch while `trainer.global_step` (completed
    optimizer steps) stays put, so the callback acts only at the accumulation boundary
    (`engine.is_gradient_accumulation_boundary()`) and reads the full gradient with
    `deepspeed.utils.safe_get_full_grad` on every rank (ZeRO partitions gradients, `.grad` is
    None); DeepSpeed clips later, inside its step. (Under DeepSpeed fp16 the value would include the loss scale; mmln trains in bf16/fp32.)

    Module paths the model lacks (layer 20 of a 2-layer model) and parameters that do not train in
    this run (norms under LoRA) are skipped with one warning. Cost: an integer test per optimizer
    step; on recorded steps, one device->host copy of the vectors and their statistics. Metrics are
    written to the loggers every `flush_every` recorded steps, at checkpoints and at the end (one
    MLflow write costs ~40 ms on sqlite, a whole step of a small model); ln_grads.npz at
    checkpoints and at the end, so a resumed run continues it.
    """

    def __init__(self, norms: Sequence[str], every_n_steps: int, out_dir: Optional[str | Path] = None,
                 flush_every: int = 10):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be >= 1")
        self.norms, self.every, self.flush_every = list(norms), int(every_n_steps), int(flush_every)
        self.pending: list[tuple[int, int, dict[str, float]]] = []
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.params: dict = {}
        self.record = GradientRecord()
        self.summary: dict[str, float] = {}

    def on_train_start(self, trainer, pl_module):
        params, missing = resolve_params(llm_decoder(pl_module.mllm), self.norms)
        self.params = {n: p for n, p in params.items() if p.requires_grad}
        frozen = [n for n, p in params.items() if not p.requires_grad]
        if missing:  # a configured norm this model lacks; a frozen one (lora, attn_qv, ...) has no gradient to record
            rank_zero_warn(f"LayerNorm gradients: skipping {len(missing) + len(frozen)} of the configured norms "
                           f"(not in this model: {missing}; not trained by this strategy: {frozen}); "
                           f"recording {sorted(self.params)}")
        done = trainer.global_step
        saved = self.out_dir / GRADS_FILE if self.out_dir else None
        self.record = GradientRecord.load(saved) if done and saved and saved.is_file() else GradientRecord()
        self.record.keep_before(done)  # resumed: keep what the earlier part of the run recorded

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if not self.params:
            return
        engine = _deepspeed_engine(trainer)
        if engine is not None and not engine.is_gradient_accumulation_boundary():
            return
        step = trainer.global_step
        if step % self.every:
            return
        if engine is not None:
            from deepspeed.utils import safe_get_full_grad

            grads = {n: safe_get_full_grad(p) for n, p in self.params.items()}  # a collective: every rank
        else:
            grads = {n: p.grad for n, p in self.params.items()}
        if not trainer.is_global_zero:
            return
        vectors, stats = to_numpy(grads)
        if set(vectors) != set(self.params):
            rank_zero_warn(f"LayerNorm gradients: no gradient for {sorted(set(self.params) - set(vectors))} "
                           f"at step {step}; step not recorded")
            return
        self.record.add(step, vectors)
        metrics = {}
        for name, (var, mean, norm) in stats.items():
            key = metric_key(name)
            metrics |= {f"analysis/ln_grad_var/{key}": var, f"analysis/ln_grad_mean/{key}": mean,
                        f"analysis/ln_grad_norm/{key}": norm}
        self.pending.append((step, int(time.time() * 1000), metrics))
        if len(self.pending) >= self.flush_every:
            self.flush(trainer)

    def flush(self, trainer) -> None:
        if self.pending:
            _log_metric_rows(trainer, self.pending)
            self.pending = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.is_global_zero:
            self.flush(trainer)
            if self.record.steps and self.out_dir is not None:
                self.record.save(self.out_dir / GRADS_FILE)

    def on_train_end(self, trainer, pl_module):
        if not trainer.is_global_zero or not self.record.steps:
            return
        self.flush(trainer)
        means = self.record.variance_means()
        self.summary = {f"analysis/ln_grad_var_mean/{metric_key(n)}": v for n, v in means.items()}
        _log_metrics(trainer, self.summary, trainer.global_step)
        if self.out_dir is not None:
            log_artifacts(trainer, self.write(self.out_dir))

    def on_exception(self, trainer, pl_module, exception):
        if trainer.is_global_zero:  # a failed or interrupted run keeps what it recorded
            self.flush(trainer)
            if self.record.steps and self.out_dir is not None:
                self.record.save(self.out_dir / GRADS_FILE)

    def write(self, out_dir: Path) -> list[Path]:
        steps, arrays = self.record.arrays()
        return [self.record.save(out_dir / GRADS_FILE),
                figures.grad_variance(steps, variances(arrays), out_dir / "ln_grad_variance.png"),
                figures.grad_histograms(steps, arrays, out_dir / "ln_grad_histograms.png")]


def held_out_dataset(trainer):
    """(dataset, collate_fn) of the validation loader, else of the training loader, else (None, None)."""
    loaders = [trainer.val_dataloaders]
    if trainer.datamodule is not None:
        try:
            loaders.append(trainer.datamodule.val_dataloader())
        except Exception:  # a data module without validation
            pass
    loaders.append(trainer.train_dataloader)
    for loader in loaders:
        if isinstance(loader, (list, tuple)):
            loader = loader[0] if loader else None
        ds = getattr(loader, "dataset", None)
        if ds is not None and len(ds) > 0:
            return ds, loader.collate_fn
    return None, None


def default_similarity_batches(n: int, seed: int, batch_size: int) -> BatchesFn:
    """`n` samples chosen by `seed` from the validation set (else the training set), in batches."""

    def batches(trainer):
        ds, collate = held_out_dataset(trainer)
        if ds is None:
            return []
        return sample_batches(ds, collate, pick_indices(len(ds), n, seed), batch_size)

    return batches


class LayerSimilarity(Callback):
    """At the end of training, the L x L similarity of the decoder blocks' outputs on a fixed
    sample set (`mmln.analysis.similarity`): metrics `analysis/layer_similarity[_variant]`, the
    matrices in layer_similarity.npz and a heatmap. Every rank runs the forward (ZeRO-3 needs all
    ranks to take part); rank 0 writes and logs. The forward runs in the trainer's precision context
    (autocast under bf16-mixed); the similarity itself is computed in fp32."""

    def __init__(self, batches_fn: BatchesFn, out_dir: Optional[str | Path] = None):
        self.batches_fn = batches_fn
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.matrices: dict[str, np.ndarray] = {}
        self.scalars: dict[str, float] = {}

    def on_train_end(self, trainer, pl_module):
        acc = layer_similarity(pl_module.mllm, self.batches_fn(trainer), pl_module.device,
                               trainer.precision_plugin.forward_context)
        if not trainer.is_global_zero:
            return
        if not acc.num_samples:
            rank_zero_warn("layer similarity: no samples (no validation or training data); skipped")
            return
        self.matrices = acc.matrices()
        self.scalars = {similarity_metric(v): s for v, s in scalars(self.matrices).items()}
        _log_metrics(trainer, self.scalars, trainer.global_step)
        if self.out_dir is not None:
            paths = [save_similarity(self.out_dir / SIMILARITY_FILE, self.matrices, acc.num_samples),
                     figures.similarity_heatmap(self.matrices["token"], self.out_dir / "layer_similarity.png",
                                                f"layer similarity ({acc.num_samples} samples)")]
            log_artifacts(trainer, paths)


def analysis_callbacks(cfg, run_dir: str | Path, similarity_batches_fn: Optional[BatchesFn] = None) -> list[Callback]:
    """The analysis callbacks `cfg.analysis` asks for, writing to `<run_dir>/analysis/` (no gradient
    recording in stage 1, where the LLM's norms are frozen).

    `similarity_batches_fn(trainer)` yields the batches of the fixed sample set (dicts with
    input_ids, attention_mask, pixel_values as the training collate makes them); default:
    `analysis.similarity_samples` samples chosen by `analysis.similarity_seed` from the validation
    set, else the training set, in micro-batches of `train.micro_batch_size`.
    """
    a, out = cfg.analysis, Path(run_dir) / "analysis"
    callbacks: list[Callback] = []
    if a.grad_every_n_steps > 0 and len(a.grad_norms) and cfg.stage != "pretrain":  # stage 1 trains no norm
        callbacks.append(LayerNormGradients(list(a.grad_norms), a.grad_every_n_steps, out))
    if a.similarity and a.similarity_samples > 0:
        fn = similarity_batches_fn or default_similarity_batches(
            a.similarity_samples, a.similarity_seed, int(cfg.train.micro_batch_size))
        callbacks.append(LayerSimilarity(fn, out))
    return callbacks
