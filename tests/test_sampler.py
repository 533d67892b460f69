"""GlobalBatchSampler: the global-batch contract (any device count, every sample once, exact
resume) in both batching modes, and that length grouping pads less than random batching."""
from __future__ import annotations

import random

import pytest

from mmln.data.sampler import GlobalBatchSampler, pad_fraction

N, G, M = 203, 16, 4  # 12 global batches, 11 samples dropped


def lengths(n=N, seed=0):
    r = random.Random(seed)
    return [16 + r.randint(5, 200) for _ in range(n)]


def sampler(world=1, rank=0, grouped=True, epoch=0, **kw):
    s = GlobalBatchSampler(N, G, M, world_size=world, rank=rank, seed=5, lengths=lengths(), grouped=grouped,
                           megabatch=kw.pop("megabatch", 4), **kw)
    s.set_epoch(epoch)
    return s


def global_order(world: int, grouped: bool, epoch: int = 0) -> list[list[int]]:
    """Micro-batches in the order the global batches consume them, gathered over all ranks."""
    per_rank = [list(sampler(world, r, grouped, epoch)) for r in range(world)]
    a = G // (M * world)
    out = []
    for step in range(N // G):
        for r in range(world):
            out += per_rank[r][step * a:(step + 1) * a]
    return out


@pytest.mark.parametrize("grouped", [True, False])
def test_same_micro_batches_for_any_device_count(grouped):
    one = global_order(1, grouped)
    assert global_order(2, grouped) == one and global_order(4, grouped) == one
    assert len(one) == (N // G) * (G // M) and all(len(mb) == M for mb in one)


@pytest.mark.parametrize("grouped", [True, False])
def test_every_sample_at_most_once_and_a_new_order_each_epoch(grouped):
    for epoch in (0, 1):
        ids = [i for mb in global_order(1, grouped, epoch) for i in mb]
        assert len(ids) == len(set(ids)) == (N // G) * G
    e0, e1 = global_order(1, grouped, 0), global_order(1, grouped, 1)
    assert e0 != e1
    # the set of samples in an epoch is the random mode's: grouping reorders, never drops or repeats
    assert sorted(i for mb in global_order(1, True, 1) for i in mb) == sorted(i for mb in global_order(1, False, 1) for i in mb)


def test_random_mode_is_the_permutation_cut_in_order():
    s = sampler(grouped=False)
    import torch

    perm = torch.randperm(N, generator=torch.Generator().manual_seed(5)).tolist()
    assert [i for mb in s for i in mb] == perm[: (N // G) * G]


def test_grouping_pads_less_and_groups_within_megabatches():
    ls = lengths()
    rand, grp = sampler(grouped=False), sampler(grouped=True)
    assert grp.pad_fraction() < 0.05 < 0.2 < rand.pad_fraction()
    mbs = grp.micro_batches()
    # a mega-batch (4 global batches) holds the same samples in both modes, only regrouped
    span = 4 * G // M
    for k in range(0, len(mbs), span):
        assert sorted(i for mb in mbs[k:k + span] for i in mb) == sorted(i for mb in rand.micro_batches()[k:k + span] for i in mb)
    assert all(max(ls[i] for i in mb) - min(ls[i] for i in mb) < 40 for mb in mbs)
    assert pad_fraction([[0, 1]], [3, 1]) == pytest.approx(2 / 6) and pad_fraction([], []) == 0.0


@pytest.mark.parametrize("grouped", [True, False])
def test_skip_resumes_exactly(grouped):
    full = list(sampler(2, 1, grouped, epoch=1))
    s = sampler(2, 1, grouped, epoch=1)
    s.skip = 5
    assert list(s) == full[5:]
    assert list(s) == full  # the skip applies once


def test_bad_arguments():
    with pytest.raises(ValueError, match="lengths"):
        GlobalBatchSampler(8, 4, 2, grouped=True)
    with pytest.raises(ValueError, match="megabatch"):
        GlobalBatchSampler(8, 4, 2, lengths=[1] * 8, grouped=True, megabatch=0)
