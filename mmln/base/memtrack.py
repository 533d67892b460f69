"""Peak tensor memory on any device (CPU included), measured by watching every allocation.

`PeakMemory` is a TorchDispatchMode: every tensor an operator returns inside the context on a
storage none of its inputs has is counted by that storage's size until the storage is freed (a
weakref callback), and the peak of the running total is kept per device. Tensors that existed
before the context (weights, optimizer state, inputs) are not counted, and neither are the
results of in-place updates or views of them (`exp_avg.lerp_(...)`, `weight.t()`): those
allocate nothing. So `peak` is the extra memory a piece of work needs on top of what existed —
what a CUDA caching allocator's `max_memory_allocated` delta shows, without allocator rounding.
On CPU it equals the peak of the allocator's own events (`torch.profiler` with profile_memory;
tests/test_plan.py checks that), kernels' internal workspaces aside.
Meta tensors count too (their storages have a size, no memory): the memory planner runs a
training step on the meta device under it. It backs the loss-memory benchmark, the planner and
the planner's CPU check.
"""
from __future__ import annotations

import weakref
from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def _tensors(x):
    """The strided tensors in an operator's arguments or results (nested tuples / lists / dicts)."""
    if isinstance(x, torch.Tensor):
        if x.layout == torch.strided:
            yield x
    elif isinstance(x, (tuple, list)):
        for y in x:
            yield from _tensors(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _tensors(y)


class PeakMemory(TorchDispatchMode):
    def __init__(self, on_alloc=None):
        """`on_alloc(device, current_bytes)`, if given, is called after every counted allocation."""
        super().__init__()
        self.current: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)
        self._seen: dict[int, weakref.ref] = {}
        self._on_alloc = on_alloc

    def _count(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = id(st)
        if key in self._seen and self._seen[key]() is st:
            return
        dev, n = str(t.device), st.nbytes()

        def freed(_ref, dev=dev, n=n, key=key):
            self.current[dev] -= n
            self._seen.pop(key, None)

        self._seen[key] = weakref.ref(st, freed)
        self.current[dev] += n
        self.peak[dev] = max(self.peak[dev], self.current[dev])
        if self._on_alloc is not None:
            self._on_alloc(dev, self.current[dev])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            if t.untyped_storage()._cdata not in inputs:  # in-place results and views allocate nothing
                self._count(t)
        return out

    def peak_bytes(self, device: str = "cpu") -> int:
        return int(self.peak.get(device, 0))

    def reset_peak(self, device: str = "cpu") -> None:
        """Start a new peak from what is allocated now (as torch.cuda.reset_peak_memory_stats)."""
        self.peak[device] = self.current[device]
