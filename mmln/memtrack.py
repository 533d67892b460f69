"""Peak tensor memory on any device (CPU included), measured by watching every allocation.

`PeakMemory` is a TorchDispatchMode: every tensor an operator returns inside the context is
counted by its storage's size until that storage is freed (a weakref callback), and the peak of
the running total is kept per device. Tensors that existed before the context (weights, inputs)
are not counted, so `peak` is the extra memory a piece of work needs on top of them — what a
CUDA caching allocator's `max_memory_allocated` delta shows, without allocator rounding.
It backs the loss-memory benchmark and the memory planner's CPU check.
"""
from __future__ import annotations

import weakref
from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakMemory(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.current: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)
        self._seen: dict[int, weakref.ref] = {}

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

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._count(t)
        return out

    def peak_bytes(self, device: str = "cpu") -> int:
        return int(self.peak.get(device, 0))
