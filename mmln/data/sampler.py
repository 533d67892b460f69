"""Global-batch sampling that is identical for any device count and resumable mid-epoch.

Each epoch draws one seeded permutation of the data set and cuts it into global batches of
`global_batch_size` samples (an incomplete last global batch is dropped). A global batch is split
into `world_size * accumulation` micro-batches; rank r takes micro-batches
`r*accumulation ... (r+1)*accumulation - 1`. One process with accumulation A*W therefore sees the
same micro-batches, in the same order, as W processes with accumulation A, and since the loss of
each micro-batch is its own token mean, the averaged gradient is the same: the basis of the
DDP-equivalence test. `skip` fast-forwards over micro-batches already trained on (exact resume).
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[list[int]]):
    def __init__(self, n: int, global_batch_size: int, micro_batch_size: int, *, world_size: int = 1,
                 rank: int = 0, seed: int = 0, shuffle: bool = True):
        if global_batch_size % (micro_batch_size * world_size):
            raise ValueError(
                f"train.global_batch_size={global_batch_size} is not a multiple of train.micro_batch_size="
                f"{micro_batch_size} x {world_size} devices"
            )
        self.n, self.g, self.m = n, global_batch_size, micro_batch_size
        self.world_size, self.rank, self.seed, self.shuffle = world_size, rank, seed, shuffle
        self.accumulation = global_batch_size // (micro_batch_size * world_size)
        self.epoch = 0
        self.skip = 0  # micro-batches of this rank to skip at the start of the current epoch

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch."""
        return self.n // self.g

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        # the full epoch even while skipping: Lightning's restored batch counter already covers the skipped part
        return self.steps_per_epoch * self.accumulation

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        per_rank = self.accumulation * self.m
        mine = []
        for step in range(self.steps_per_epoch):
            start = step * self.g + self.rank * per_rank
            chunk = order[start:start + per_rank]
            mine += [chunk[i:i + self.m] for i in range(0, per_rank, self.m)]
        skip, self.skip = self.skip, 0
        yield from mine[skip:]
