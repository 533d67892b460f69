"""Step time (wall and CPU), tokens/s, samples/s and peak memory, logged as `perf/*` metrics and summarised per run."""
from __future__ import annotations

import resource
import sys
import time

import torch
from lightning.pytorch import Callback


def peak_memory_gb(device: torch.device) -> float:
    """GPU: max allocated since the last reset. CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


class Efficiency(Callback):
    """Counts tokens the LLM processed (after splicing, padding excluded) and times optimizer steps
    (the first `warmup_steps` left out). The device is synchronised once per optimizer step, never
    per micro-step, and counts come from host-side batch sizes. Besides wall time it reads the
    process's CPU time (all threads) at the same points: `perf/cpu_step_s` is the host work per
    micro-step, which other processes on a shared machine do not inflate the way they inflate wall time."""

    def __init__(self, warmup_steps: int = 1):
        self.warmup_steps = warmup_steps
        self.reset()

    def reset(self):
        self.t0 = self.cpu0 = None
        self.tokens = self.samples = self.steps = self.micro_steps = 0  # steps: optimizer steps
        self._tokens = self._samples = self._micro = 0  # of the optimizer step in progress
        self.elapsed = self.cpu_elapsed = 0.0
        self.summary: dict[str, float] = {}
        self.pad_fraction: float | None = None

    def on_train_start(self, trainer, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self.reset()

    def on_train_epoch_start(self, trainer, pl_module):
        sampler = getattr(getattr(trainer, "datamodule", None), "train_sampler", None)
        pad = sampler.pad_fraction() if sampler is not None and hasattr(sampler, "pad_fraction") else None
        if pad is not None:  # padded share of all positions this epoch (see mmln.data.sampler)
            self.pad_fraction = pad
            # the same on every rank (all ranks' batches): sync_dist's mean is that value, and Lightning stays quiet
            pl_module.log("data/pad_fraction", pad, on_step=False, on_epoch=True, prog_bar=False, sync_dist=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.t0 is None:  # the first micro-batch: start the clock once the device is idle
            self._sync(pl_module)
            self.t0, self.cpu0 = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # counts are host ints; the clock is read (after one device sync) only when an optimizer step ends
        stats = pl_module.last_batch
        self._tokens += stats["tokens"] * trainer.world_size
        self._samples += stats["samples"] * trainer.world_size
        self._micro += 1
        if (batch_idx + 1) % max(trainer.accumulate_grad_batches, 1):
            return
        self._sync(pl_module)
        now, cpu = time.perf_counter(), time.process_time()
        dt, cpu_dt, self.t0, self.cpu0 = now - self.t0, cpu - self.cpu0, now, cpu
        self.steps += 1
        if self.steps > self.warmup_steps:
            self.elapsed += dt
            self.cpu_elapsed += cpu_dt
            self.tokens += self._tokens
            self.samples += self._samples
            self.micro_steps += self._micro
        self._tokens = self._samples = self._micro = 0
        if self.steps > self.warmup_steps and trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            pl_module.log_dict(self.metrics(pl_module.device), on_step=True, on_epoch=False, prog_bar=False)

    @staticmethod
    def _sync(pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def metrics(self, device) -> dict[str, float]:
        t = max(self.elapsed, 1e-9)
        return {
            "perf/tokens_per_s": self.tokens / t,
            "perf/samples_per_s": self.samples / t,
            "perf/micro_step_s": self.elapsed / max(self.micro_steps, 1),
            "perf/cpu_step_s": self.cpu_elapsed / max(self.micro_steps, 1),
            "perf/peak_mem_gb": peak_memory_gb(device),
        }

    def on_train_end(self, trainer, pl_module):
        self.summary = self.metrics(pl_module.device)
        if self.pad_fraction is not None:
            self.summary["data/pad_fraction"] = self.pad_fraction
