"""What a Lightning Trainer of a run is made of, from the config: its device count, precision and
distributed strategy, the step-exact checkpoint callback, and the debug hooks tests use to fail or
pause a run at a chosen step. Lightning is imported on use, never at import."""
from __future__ import annotations

import os
import time
from pathlib import Path

from mmln.base.io import write_text


def fail_at(step: int):
    """debug.fail_at_step: a callback that raises after that optimizer step, as a killed or crashing
    run would (built on use: importing this module must not import Lightning)."""
    from lightning.pytorch import Callback

    class FailAt(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step >= step:
                raise RuntimeError(f"debug.fail_at_step={step}: failing on purpose at step {trainer.global_step}")

    return FailAt()


def pause_at(steps, run_dir: Path):
    """debug.pause_at_steps: a callback that, at the first batch starting at one of those optimizer
    steps, writes `<run dir>/paused-<step>` and sleeps, so that a test can kill the process there
    (once per step: a resumed run passes it)."""
    from lightning.pytorch import Callback

    class PauseAt(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            marker = run_dir / f"paused-{trainer.global_step}"
            if trainer.global_step in set(steps) and not marker.exists():
                write_text(marker, str(os.getpid()))
                time.sleep(600)

    return PauseAt()


def epoch_end_resume():
    """A callback that makes resuming from a checkpoint saved after an epoch's last batch exact.

    Lightning (2.6) saves `last.ckpt` at `on_train_batch_end`, before the epoch is counted as
    processed. Resumed from such a checkpoint, it counts that epoch as processed and completed, but
    still treats the run as restarted mid-epoch: the next epoch starts without `on_train_epoch_start`
    and without counting its start, so a checkpoint saved inside it says that no epoch is running
    (the epoch progress's `ready == processed`). A run resumed from that one then repeats an epoch:
    a halving survivor paused at 3, 12 (an epoch end) and 24 of 36 steps trained to step 48.
    `on_train_start` (after Lightning restored its loops) starts the next epoch as a fresh one;
    `on_load_checkpoint` repairs checkpoints written without this callback."""
    from lightning.pytorch import Callback

    class EpochEndResume(Callback):
        def on_load_checkpoint(self, trainer, pl_module, checkpoint):
            loop = checkpoint.get("loops", {}).get("fit_loop", {})
            epochs, batches = loop.get("epoch_progress"), loop.get("epoch_loop.batch_progress")
            if not epochs or not batches:
                return
            if batches["current"]["completed"] == batches["current"]["processed"]:
                return  # not saved at a batch's end inside an epoch
            for counts in (epochs["total"], epochs["current"]):
                if counts["ready"] == counts["processed"]:  # an epoch running, counted as none: the miscount above
                    counts["ready"] += 1
                    counts["started"] += 1

        def on_train_start(self, trainer, pl_module):
            loop = trainer.fit_loop
            if (loop.restarted_mid_epoch and loop.epoch_loop.restarted_on_train_batch_end
                    and loop.epoch_loop.batch_progress.is_last_batch):  # the saved epoch was finished on restore
                loop.reset_restart_stage()

    return EpochEndResume()


def world_size(cfg) -> int:
    import torch

    t = cfg.train
    if t.strategy in ("auto", "single") and (t.devices == "auto"):
        return 1
    if isinstance(t.devices, int):
        n = t.devices
    elif t.devices == "auto":
        n = torch.cuda.device_count() if (t.accelerator != "cpu" and torch.cuda.is_available()) else 1
    else:
        n = len(t.devices) if not isinstance(t.devices, str) else len(t.devices.split(","))
    return n * t.num_nodes


def precision(cfg) -> str:
    import torch

    if cfg.train.precision != "auto":
        return cfg.train.precision
    return "bf16-mixed" if torch.cuda.is_available() and cfg.train.accelerator != "cpu" else "32-true"


def lightning_strategy(cfg):
    s = cfg.train.strategy
    if s.endswith(".json"):
        from lightning.pytorch.strategies import DeepSpeedStrategy

        return DeepSpeedStrategy(config=s)
    if s.startswith("deepspeed"):
        from lightning.pytorch.strategies import DeepSpeedStrategy

        stage = int(s.split("_")[2])
        return DeepSpeedStrategy(stage=stage, exclude_frozen_parameters=True)
    if s == "fsdp2":  # FSDP2 through Lightning's ModelParallelStrategy (mmln.lit.fsdp2)
        from mmln.lit.fsdp2 import FSDP2Strategy

        return FSDP2Strategy(world_size(cfg))
    if s == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        from mmln.families import native_family

        # a native family's projector gets no gradient on a rank whose micro-batch has no image:
        # DDP must find it unused, or the other rank waits for its all-reduce forever
        unused = native_family(cfg.model) is not None
        if cfg.train.accelerator == "cpu":
            return DDPStrategy(process_group_backend="gloo", find_unused_parameters=unused)
        return DDPStrategy(find_unused_parameters=True) if unused else s
    return s


def step_checkpoint(**kwargs):
    """A ModelCheckpoint that saves only at the micro-batch that closes a gradient-accumulation
    window. Lightning's own check (`global_step % n == 0`, not saved at this step yet) forgets, after
    a resume, that the restored step was saved, and would save again after the next micro-batch: a
    checkpoint in the middle of an accumulation, whose partial gradients it does not hold.

    A run that reaches its end also saves `last.ckpt` at its final step. Lightning (2.6) saves at the
    end only when it saved nothing before, so a finished 5,292-step run kept its step-5,250 checkpoint,
    and `resume=auto` on it trained the last 42 steps again and rewrote its outputs."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    class StepCheckpoint(ModelCheckpoint):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if (batch_idx + 1) % max(1, trainer.accumulate_grad_batches) == 0:
                super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

        def on_train_end(self, trainer, pl_module):
            super().on_train_end(trainer, pl_module)
            # the end, not a stop (a signal or a pause sets should_stop and saves its own checkpoint)
            if not trainer.should_stop and not self._should_skip_saving_checkpoint(trainer):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    return StepCheckpoint(**kwargs)
