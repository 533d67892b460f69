"""Lightning's TQDM bar with a total that respects `train.max_steps` (Lightning's own counts the
whole epoch unless max_epochs is -1, e.g. "8/882" for an 8-step run)."""
from __future__ import annotations

from typing import Union

from lightning.pytorch.callbacks import TQDMProgressBar


class StepBoundedProgressBar(TQDMProgressBar):
    @property
    def total_train_batches(self) -> Union[int, float]:
        t = self.trainer
        total = t.num_training_batches
        if t.max_steps is not None and t.max_steps > 0:  # optimizer steps left, in micro-batches
            total = min(total, (t.max_steps - t.global_step) * t.accumulate_grad_batches)
        return total
