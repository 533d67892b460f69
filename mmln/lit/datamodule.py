"""The one LightningDataModule of both stages (all data logic lives in mmln.data).

Train batches come from `mmln.data.sampler.GlobalBatchSampler`: one seeded permutation per epoch
cut into global batches of `train.global_batch_size`, split into micro-batches of
`train.micro_batch_size` across ranks and accumulation steps, so a run sees the same samples in
the same order for any device count (the Trainer runs with `use_distributed_sampler=False`).
Mid-epoch resume is exact: the number of micro-batches this rank consumed in the current epoch
is saved with the checkpoint (`state_dict`) and skipped when the loader is rebuilt, and every
epoch (the first one after a resume included, with DataLoader workers) draws its own permutation.
"""
from __future__ import annotations

from typing import Any, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from mmln.config import ConfigError
from mmln.data.dataset import Collator, LlavaDataset, build_datasets, pad_token_id
from mmln.data.sampler import GlobalBatchSampler


class _EpochBatchSampler(GlobalBatchSampler):
    """GlobalBatchSampler reachable by Lightning's per-epoch `set_epoch` call, which only looks at
    `dataloader.sampler` and `dataloader.batch_sampler.sampler` (without this every epoch would
    replay epoch 0's permutation)."""

    @property
    def sampler(self) -> "_EpochBatchSampler":
        return self


class _Shard(Sampler[int]):
    """Every `world_size`-th index from `rank` (validation: each sample evaluated once overall)."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class MMLNDataModule(L.LightningDataModule):
    """Datasets from `cfg.data` / `cfg.model`; loaders from `cfg.train` (batch sizes, seed) and
    `cfg.data.num_workers` (persistent workers when > 0). Batches carry `bad` / `empty` (see
    mmln.data.dataset) for the training step to count and skip bad samples.

    `num_image_tokens` (positions one image takes after expansion): the vision encoder's
    `num_patches`; default `mmln.base.constants.image_positions(cfg.model.vision)`, the same rule.
    """

    def __init__(self, cfg: Any, tokenizer: Any, num_image_tokens: Optional[int] = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        self.collate = Collator(pad_token_id(tokenizer))
        self.world_size: Optional[int] = None
        self.train_set: Optional[LlavaDataset] = None
        self.val_set: Optional[LlavaDataset] = None
        self.train_sampler: Optional[GlobalBatchSampler] = None
        self.train_lengths: Optional[list[int]] = None  # post-expansion length of every training sample
        self._resume_skip: Optional[tuple[int, int]] = None  # (epoch, micro-batches done) from a checkpoint

    # ---- datasets
    def setup(self, stage: Optional[str] = None, world_size: Optional[int] = None) -> None:
        if world_size is not None:
            self.world_size = world_size
        if self.train_set is None and self.cfg.model.init_from:
            self.train_set, self.val_set = self._processor_datasets() or (None, None)
        if self.train_set is None:
            if self.num_image_tokens is None:
                from mmln.base.constants import image_positions

                self.num_image_tokens = image_positions(self.cfg.model.vision)
            self.train_set, self.val_set = build_datasets(self.cfg, self.tokenizer, self.num_image_tokens)
        t = self.cfg.train
        if t.global_batch_size % (t.micro_batch_size * self._world()):
            raise ConfigError(
                f"train.global_batch_size={t.global_batch_size} is not a multiple of train.micro_batch_size="
                f"{t.micro_batch_size} x {self._world()} devices"
            )

    def _processor_datasets(self):
        """A native family's data: records through its own processor and chat template (mmln.data.processor);
        None for the LLaVA assembly."""
        from transformers import AutoProcessor

        from mmln.data.processor import ProcessorCollator, ProcessorDataset
        from mmln.data.records import load_train_val
        from mmln.families import native_family

        family = native_family(self.cfg.model)
        if family is None:
            return None
        processor = AutoProcessor.from_pretrained(self.cfg.model.init_from)
        kw = dict(text_aligned=family.text_aligned, max_length=self.cfg.model.max_length,
                  on_bad_sample=self.cfg.data.on_bad_sample)
        train, val = load_train_val(self.cfg.data)
        train_set = ProcessorDataset(train, processor, **kw)
        # fsdp2: every rank runs the image path on every micro-batch (a blank image where it has none)
        blank = train_set.blank_image_inputs() if self.cfg.train.strategy == "fsdp2" else None
        self.collate = ProcessorCollator(pad_token_id(processor.tokenizer), family.text_aligned, blank)
        return train_set, (ProcessorDataset(val, processor, **kw) if val else None)

    def _world(self) -> int:
        if self.world_size is not None:
            return self.world_size
        return self.trainer.world_size if self.trainer is not None else 1

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def num_train(self) -> int:
        self.setup()
        assert self.train_set is not None
        return len(self.train_set)

    @property
    def accumulation(self) -> int:
        t = self.cfg.train
        return t.global_batch_size // (t.micro_batch_size * self._world())

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (an incomplete last global batch is dropped)."""
        return self.num_train // self.cfg.train.global_batch_size

    @property
    def has_val(self) -> bool:
        self.setup()
        return self.val_set is not None and len(self.val_set) > 0

    # ---- loaders
    def _loader(self, ds: LlavaDataset, **kw: Any) -> DataLoader:
        workers = int(self.cfg.data.num_workers)
        return DataLoader(
            ds,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=self.collate,
            **kw,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        assert self.train_set is not None
        t = self.cfg.train
        if self.train_lengths is None:
            self.train_lengths = self.train_set.lengths()
        self.train_sampler = _EpochBatchSampler(
            len(self.train_set), t.global_batch_size, t.micro_batch_size,
            world_size=self._world(), rank=self._rank(), seed=t.seed, shuffle=True,
            lengths=self.train_lengths, grouped=self.cfg.data.batching == "length_grouped",
            megabatch=int(self.cfg.data.megabatch),
            packed=int(self.cfg.model.max_length) if self.cfg.data.batching == "packed" else None,
        )
        # Lightning creates the first iterator before its own set_epoch call, and DataLoader workers
        # draw indices at once, so the first epoch to run is set here: the trainer's current epoch,
        # or on resume the checkpoint's epoch (the next one if that epoch had been fully consumed)
        epoch, done = self._resume_skip or (self.trainer.current_epoch if self.trainer is not None else 0, 0)
        self._resume_skip = None
        if done >= len(self.train_sampler):
            epoch, done = epoch + 1, 0
        self.train_sampler.set_epoch(epoch)
        self.train_sampler.skip = done
        # a private generator: building an iterator (each epoch, and on resume) never draws from the
        # global RNG, which dropout uses, so results do not depend on when iterators are built
        # (resume at an epoch boundary) or on data.num_workers
        generator = torch.Generator().manual_seed(int(t.seed) + epoch)
        return self._loader(self.train_set, batch_sampler=self.train_sampler, generator=generator)

    def val_dataloader(self) -> Any:
        self.setup()
        if not self.has_val:
            return []
        assert self.val_set is not None
        sampler = _Shard(len(self.val_set), self._rank(), self._world())
        return self._loader(self.val_set, batch_size=int(self.cfg.train.micro_batch_size), sampler=sampler)

    # ---- exact mid-epoch resume
    def state_dict(self) -> dict[str, Any]:
        if self.trainer is None:
            return {}
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": int(self.trainer.current_epoch), "micro_batches_done": int(done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "micro_batches_done" in state_dict:
            self._resume_skip = (int(state_dict["epoch"]), int(state_dict["micro_batches_done"]))
