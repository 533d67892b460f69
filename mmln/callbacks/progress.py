"""`StepCounter` publishes a run's step k/n for heartbeats (`mmln.base.progress.STEPS`); Lightning's TQDM bar with a total that respects `train.max_steps` (Lightning's own counts the
whole epoch unless max_epochs is -1, e.g. "8/882" for an 8-step run)."""
from __future__ import annotations

from typing import Union

from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from mmln.base import progress


class StepCounter(Callback):
    """Keeps `mmln.base.progress.STEPS` at this run's optimizer steps done of `total` (cleared at the end)."""

    def __init__(self, total: int) -> None:
        self.total = int(total)

    def on_train_start(self, trainer, pl_module) -> None:
        import time

        progress.STEPS.update(done=trainer.global_step, total=self.total, t0=time.time(), start=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        progress.STEPS["done"] = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        progress.STEPS.clear()

    def on_exception(self, trainer, pl_module, exception) -> None:
        progress.STEPS.clear()


class StepBoundedProgressBar(TQDMProgressBar):
    @property
    def total_train_batches(self) -> Union[int, float]:
        t = self.trainer
        total = t.num_training_batches
        if t.max_steps is not None and t.max_steps > 0:  # optimizer steps left, in micro-batches
            total = min(total, (t.max_steps - t.global_step) * t.accumulate_grad_batches)
        return total
