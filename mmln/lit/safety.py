"""What keeps a run honest when things go wrong: safe and atomic checkpoints, non-finite steps, signals.

- `SafeCheckpointIO`: Lightning's checkpoint I/O, but every `.ckpt` is written to a temp file in
  the checkpoint's own folder and renamed over the target (Lightning's default stages it in
  `$TMPDIR` and *copies* it over when that is another filesystem, so a kill mid-copy left a
  0-byte `last.ckpt`), and read with `weights_only=True` (`mmln.model.checkpoint.torch_load`).
- `NonFiniteGuard`: before each optimizer step, every trainable gradient must be finite, and
  after it every trainable tensor. `train.nonfinite=stop` (default) raises `NonFiniteError` at the
  first bad step, before the optimizer touches the weights and before any checkpoint is written,
  so the last good checkpoint stays as it was. `skip_step` drops that step's gradients (the
  optimizer skips parameters without a gradient) and stops once more than
  `train.nonfinite_limit` steps were skipped.
- `StopOnSignal`: SIGTERM (what SLURM and Kubernetes send before a kill or preemption) and SIGINT
  (Ctrl-C) finish the current optimizer step, write `checkpoints/last.ckpt` there (a step
  boundary, so resuming from it is exact) and stop once Lightning logged that step (mmln.fit then
  raises `RunInterrupted`). A second SIGINT stops at once.
"""
from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mmln.base.io import atomic_path
from mmln.model.checkpoint import damaged_checkpoint, torch_load


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss, gradient or weight; the message names the step and where."""

    def __init__(self, step: int, reason: str):
        self.step, self.reason = step, reason
        super().__init__(f"non-finite training at step {step}: {reason}. The last good checkpoint is kept; "
                         "lower train.lr, or set train.nonfinite=skip_step to skip such steps")


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped by a signal after saving a resumable checkpoint (an interrupt, so that a
    sweep stops too instead of going on to its next point). Raised by mmln.fit from `StopRequested`."""

    def __init__(self, signum: int, step: int, ckpt: Optional[Path]):
        self.signum, self.step, self.ckpt = signum, step, ckpt
        name = signal.Signals(signum).name
        saved = f"checkpoint saved at step {step}: {ckpt}" if ckpt else f"no checkpoint saved (step {step})"
        super().__init__(f"{name} received: {saved}; run it again with resume=auto to continue")


class StopRequested(RuntimeError):
    """Raised inside `trainer.fit` (Lightning turns a KeyboardInterrupt there into `sys.exit(1)`)."""

    def __init__(self, signum: int, step: int, ckpt: Optional[Path]):
        self.signum, self.step, self.ckpt = signum, step, ckpt
        super().__init__(f"stopped by signal {signum} at step {step}")


RESUME_KEYS = ("state_dict", "loops", "global_step", "optimizer_states")


class SafeCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None):
        return read_resume_checkpoint(path)


def read_resume_checkpoint(path) -> dict[str, Any]:
    """A training checkpoint to resume from, read safely; a damaged one is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume: checkpoint '{path}' not found")
    ckpt = torch_load(path, "resume checkpoint")
    missing = [k for k in RESUME_KEYS if k not in ckpt] if isinstance(ckpt, dict) else list(RESUME_KEYS)
    if missing:
        raise damaged_checkpoint(path, "resume checkpoint", f"not a Lightning training checkpoint: no {', '.join(missing)}")
    return ckpt


def _trainables(pl_module):
    return [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]


def _first_nonfinite(named: list) -> Optional[str]:
    """The name of the first tensor with a NaN or inf, or None; one device sync when all are finite."""
    if not named or bool(torch.stack([torch.isfinite(t).all() for _, t in named]).all()):
        return None
    return next(n for n, t in named if not torch.isfinite(t).all())


class NonFiniteGuard(Callback):
    def __init__(self, mode: str = "stop", limit: int = 0, check_grads: bool = True):
        # check_grads=False under fp16 mixed precision, whose loss scaler skips inf steps by design
        self.mode, self.limit, self.skipped, self.check_grads = mode, limit, 0, check_grads
        self._step_before = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.check_grads:
            return
        bad = _first_nonfinite([(n, p.grad) for n, p in _trainables(pl_module) if p.grad is not None])
        if bad is None:
            return
        step = trainer.global_step + 1
        loss = trainer.callback_metrics.get("train/loss")
        loss_note = f"train/loss={float(loss):g}, " if loss is not None and not math.isfinite(float(loss)) else ""
        reason = f"{loss_note}non-finite gradient of {bad}"
        if self.mode == "skip_step" and self.skipped < self.limit:
            self.skipped += 1
            for _, p in _trainables(pl_module):
                p.grad = None
            pl_module.print(f"train.nonfinite=skip_step: skipped step {step} ({reason}); "
                            f"{self.skipped} of at most {self.limit}")
            return
        if self.mode == "skip_step":
            reason += f"; more than train.nonfinite_limit={self.limit} steps skipped"
        raise NonFiniteError(step, reason)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # runs before ModelCheckpoint (Lightning orders checkpoint callbacks last): no bad weight is saved
        if trainer.global_step == self._step_before:
            return
        bad = _first_nonfinite([(n, p.detach()) for n, p in _trainables(pl_module)])
        if bad is not None:
            raise NonFiniteError(trainer.global_step, f"weight {bad} is non-finite after the optimizer step")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = state_dict.get("skipped", 0)


class StopOnSignal(Callback):
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, ckpt_path: Path):
        self.ckpt_path = Path(ckpt_path)
        self.received: Optional[int] = None
        self.saved_step: Optional[int] = None
        self._previous: dict[int, Any] = {}
        self._step_before = 0

    def _handler(self, signum, frame) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = signum

    def on_train_start(self, trainer, pl_module) -> None:
        # after Lightning registered its own SIGTERM handler (which would stop mid-accumulation)
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._handler)

    def _restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.raise_if_stopped()
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.received is None or self.saved_step is not None or trainer.global_step == self._step_before:
            return  # no signal, or inside a gradient accumulation: finish the optimizer step first
        trainer.save_checkpoint(self.ckpt_path)
        self.saved_step = trainer.global_step
        # raised at the next batch (or by mmln.fit after the last one), so that Lightning still logs this step

    def raise_if_stopped(self) -> None:
        if self.saved_step is not None:
            raise StopRequested(self.received, self.saved_step, self.ckpt_path)
