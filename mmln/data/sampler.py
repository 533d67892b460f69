"""Global-batch sampling that is identical for any device count and resumable mid-epoch.

Each epoch draws one seeded permutation of the data set and cuts it into global batches of
`global_batch_size` samples (an incomplete last global batch is dropped). The epoch is a list of
micro-batches of `micro_batch_size`, the same list for any device count; global batch s is
micro-batches `s*k ... (s+1)*k - 1` (k = global / micro), and rank r of W takes the r-th run of
`accumulation = k / W` of them. One process with accumulation A*W therefore sees the same
micro-batches, in the same order, as W processes with accumulation A, and since the loss of each
micro-batch is its own token mean, the averaged gradient is the same: the basis of the
DDP-equivalence test. `skip` fast-forwards over micro-batches already trained on (exact resume).

Batching modes:
- `random`: micro-batches are consecutive runs of the permutation.
- `length_grouped` (`grouped=True`, given `lengths`, the post-expansion length of every sample: text tokens plus
  the image's positions): the permutation is cut into mega-batches of `megabatch` global batches;
  each mega-batch is sorted by length (longest first) and cut into micro-batches, which are then
  shuffled (seeded) and dealt out to the mega-batch's global batches. A micro-batch so holds
  samples of similar length and pads little; every sample is still drawn once per epoch, and the
  list depends only on the seed, the epoch and the data, never on the device count.
- packed (`packed=max_length`): micro-batches are drawn as with `random`; the model then lays each
  one's samples into rows (`mmln.base.constants.pack_rows`), and `pad_fraction` counts those rows' padding.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.utils.data import Sampler

from mmln.base.constants import pack_rows


def pad_fraction(micro_batches: Sequence[Sequence[int]], lengths: Sequence[int], packed: Optional[int] = None) -> float:
    """Share of all positions that are padding when each micro-batch pads to its longest sample,
    or, with `packed` (the row capacity, `model.max_length`), when its samples are packed into
    rows (`pack_rows`) that pad to the longest row, as `MLLM.pack` lays them out."""
    total = used = 0
    for mb in micro_batches:
        ls = [lengths[i] for i in mb]
        if packed and ls:
            rows = [sum(ls[j] for j in row) for row in pack_rows(ls, packed)]
            total += len(rows) * max(rows)
        else:
            total += len(ls) * max(ls, default=0)
        used += sum(ls)
    return 1.0 - used / total if total else 0.0


class GlobalBatchSampler(Sampler[list[int]]):
    def __init__(self, n: int, global_batch_size: int, micro_batch_size: int, *, world_size: int = 1,
                 rank: int = 0, seed: int = 0, shuffle: bool = True, lengths: Optional[Sequence[int]] = None,
                 grouped: bool = False, megabatch: int = 8, packed: Optional[int] = None):
        if global_batch_size % (micro_batch_size * world_size):
            raise ValueError(
                f"train.global_batch_size={global_batch_size} is not a multiple of train.micro_batch_size="
                f"{micro_batch_size} x {world_size} devices"
            )
        if grouped and lengths is None:
            raise ValueError("length-grouped batching needs the samples' lengths")
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} samples")
        if megabatch < 1:
            raise ValueError(f"data.megabatch={megabatch} must be >= 1 (global batches grouped by length together)")
        self.n, self.g, self.m = n, global_batch_size, micro_batch_size
        self.world_size, self.rank, self.seed, self.shuffle = world_size, rank, seed, shuffle
        self.lengths = None if lengths is None else list(lengths)
        self.grouped, self.megabatch = grouped, megabatch
        self.packed = packed  # row capacity under data.batching=packed (only pad_fraction uses it)
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

    def micro_batches(self) -> list[list[int]]:
        """Every micro-batch of the current epoch, all ranks, in global order."""
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        order = order[: self.steps_per_epoch * self.g]
        if not self.grouped:
            return [order[i:i + self.m] for i in range(0, len(order), self.m)]
        gen = torch.Generator().manual_seed(self.seed + self.epoch + 7919)  # its own stream: the permutation stays
        out, span = [], self.megabatch * self.g
        for start in range(0, len(order), span):
            mega = sorted(order[start:start + span], key=lambda i: -self.lengths[i])  # stable: ties keep their order
            mbs = [mega[i:i + self.m] for i in range(0, len(mega), self.m)]
            out += [mbs[j] for j in torch.randperm(len(mbs), generator=gen).tolist()] if self.shuffle else mbs
        return out

    def pad_fraction(self) -> Optional[float]:
        """Padded share of all positions this epoch (all ranks), or None without `lengths` (either mode)."""
        return None if self.lengths is None else pad_fraction(self.micro_batches(), self.lengths, self.packed)

    def __iter__(self):
        k, a = self.g // self.m, self.accumulation
        every = self.micro_batches()
        mine = [every[s * k + self.rank * a + j] for s in range(self.steps_per_epoch) for j in range(a)]
        skip, self.skip = self.skip, 0
        yield from mine[skip:]
