"""Cross-layer similarity of the residual stream (paper Table 6 / Fig. 3). Pure torch/numpy.

The hidden state of a block is its output on the residual stream, captured with a forward hook on
every decoder block (`block_outputs`): not the embedding output, and never after the final norm.
Everything is computed in fp32.

Variants (`VARIANTS`), each an L x L matrix averaged over samples:

    token     per token, cosine between every pair of layers; mean over the sample's non-pad
              tokens, then over samples (the reported number)
    meanpool  cosine between the sample's mean-pooled (over non-pad tokens) hidden states
    image     as `token`, image positions only (samples without image positions do not count)
    text      as `token`, text positions only
    no_bos    as `token`, without the first non-pad position (the BOS token in every template)

The reported scalar of a matrix is the mean of its off-diagonal entries (`off_diagonal_mean`).
"""
from __future__ import annotations

import random
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, ContextManager, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmln.base.io import atomic_path
from mmln.model.layout import llm_decoder

VARIANTS = ("token", "meanpool", "image", "text", "no_bos")


# ----------------------------------------------------------------------------- pure statistics
def token_similarity(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the mean over masked tokens of the layer x layer cosine similarity.

    hidden (L, B, T, D), mask (B, T) bool -> (B, L, L) and (B,) bool "sample has a masked token".
    Unmasked positions never enter: they are zeroed before normalizing (even NaN/inf there is harmless).
    """
    h = torch.where(mask[None, :, :, None], hidden.float(), 0.0)
    h = F.normalize(h, dim=-1)  # a zero vector stays zero
    n = mask.sum(dim=1)  # (B,)
    sims = torch.einsum("ibtd,jbtd->bij", h, h) / n.clamp(min=1)[:, None, None]
    return sims, n > 0


def meanpool_similarity(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, cosine between the layers' hidden states mean-pooled over masked tokens: (B, L, L), (B,)."""
    h = torch.where(mask[None, :, :, None], hidden.float(), 0.0)
    pooled = F.normalize(h.sum(dim=2) / mask.sum(dim=1).clamp(min=1)[None, :, None], dim=-1)  # (L, B, D)
    return torch.einsum("ibd,jbd->bij", pooled, pooled), mask.any(dim=1)


def first_position(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool marking the first True position of each row (for left or right padding)."""
    first = torch.zeros_like(mask)
    rows = mask.any(dim=1)
    first[rows, mask[rows].int().argmax(dim=1)] = True
    return first


def off_diagonal_mean(matrix: np.ndarray) -> float:
    m = np.asarray(matrix, dtype=np.float64)
    L = m.shape[0]
    return float((m.sum() - np.trace(m)) / (L * (L - 1))) if L > 1 else float("nan")


class SimilarityAccumulator:
    """Adds batches of block outputs; `matrices()` gives each variant's L x L mean over samples."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {v: 0 for v in VARIANTS}

    @torch.no_grad()
    def add(self, hidden: Sequence[torch.Tensor] | torch.Tensor, attention_mask: torch.Tensor,
            image_mask: Optional[torch.Tensor] = None) -> None:
        """hidden: L tensors (B, T, D) or one (L, B, T, D); attention_mask (B, T), 1 = real token."""
        layers = list(hidden.unbind(0) if isinstance(hidden, torch.Tensor) else hidden)
        valid = attention_mask.to(layers[0].device).bool()
        image = torch.zeros_like(valid) if image_mask is None else image_mask.to(valid.device).bool() & valid
        for b in range(valid.shape[0]):  # one sample at a time: the fp32 copies are (L, 1, T, D)
            hb = torch.stack([x[b:b + 1] for x in layers])
            vb, ib = valid[b:b + 1], image[b:b + 1]
            masks = {"token": vb, "image": ib, "text": vb & ~ib, "no_bos": vb & ~first_position(vb)}
            for name, mask in masks.items():
                self._add(name, *token_similarity(hb, mask))
            self._add("meanpool", *meanpool_similarity(hb, vb))

    def _add(self, name: str, sims: torch.Tensor, has: torch.Tensor) -> None:
        s = sims[has].double().sum(dim=0).cpu()
        self.sums[name] = self.sums[name] + s if name in self.sums else s
        self.counts[name] += int(has.sum())

    @property
    def num_samples(self) -> int:
        return self.counts["token"]

    def matrices(self) -> dict[str, np.ndarray]:
        """Variant -> (L, L) float64; all-NaN for a variant no sample had positions for."""
        out = {}
        for name in VARIANTS:
            if name in self.sums and self.counts[name]:
                out[name] = (self.sums[name] / self.counts[name]).numpy()
            elif self.sums:
                out[name] = np.full_like(next(iter(self.sums.values())).numpy(), np.nan)
        return out


def scalars(matrices: dict[str, np.ndarray]) -> dict[str, float]:
    """Variant -> off-diagonal mean (`token` is the reported layer similarity)."""
    return {name: off_diagonal_mean(m) for name, m in matrices.items()}


# ----------------------------------------------------------------------------- capture
@contextmanager
def block_outputs(layers: Iterable[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Forward hooks on `layers`: each forward appends every block's output (its residual stream)."""
    outs: list[torch.Tensor] = []

    def hook(module, args, output):
        outs.append((output[0] if isinstance(output, tuple) else output).detach())

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield outs
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def layer_similarity(mllm, batches: Iterable[dict], device: Optional[torch.device] = None,
                     forward_context: Callable[[], ContextManager] = nullcontext) -> SimilarityAccumulator:
    """Run the MLLM's decoder (no LM head) on `batches` (input_ids, attention_mask, pixel_values)
    and accumulate the similarity of its block outputs. `forward_context` wraps each forward
    (e.g. the trainer's autocast when frozen weights are bf16)."""
    device = device or next(mllm.parameters()).device
    acc, decoder, layers = SimilarityAccumulator(), llm_decoder(mllm), list(mllm.decoder_layers())
    was_training = mllm.training
    mllm.eval()
    try:
        for batch in batches:
            if batch["input_ids"].shape[0] == 0:
                continue
            pixels = batch.get("pixel_values")
            if hasattr(mllm, "hidden_states"):  # a native family (mmln.model.families): its own forward runs
                with forward_context(), block_outputs(layers) as outs:
                    mask, image_mask = mllm.hidden_states(batch["input_ids"].to(device),
                                                          batch["attention_mask"].to(device), pixels)
                if len(outs) != len(layers):
                    raise RuntimeError(f"captured {len(outs)} block outputs for {len(layers)} decoder blocks")
                acc.add(outs, mask, image_mask)
                continue
            with forward_context():
                s = mllm.embed_batch(batch["input_ids"].to(device), batch["attention_mask"].to(device), None,
                                     pixels.to(device) if pixels is not None and pixels.numel() else None)
                with block_outputs(layers) as outs:
                    decoder(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask, use_cache=False)
            if len(outs) != len(layers):
                raise RuntimeError(f"captured {len(outs)} block outputs for {len(layers)} decoder blocks")
            acc.add(outs, s.attention_mask, s.image_mask)
    finally:
        mllm.train(was_training)
    return acc


# ----------------------------------------------------------------------------- samples and files
def pick_indices(n_total: int, n: int, seed: int) -> list[int]:
    """The fixed sample set: `n` indices of a data set of `n_total` records, chosen by `seed`."""
    return sorted(random.Random(seed).sample(range(n_total), min(n, n_total)))


def sample_batches(dataset, collate: Callable, indices: Sequence[int], batch_size: int) -> Iterator[dict]:
    """Batches of `dataset[i]` for `indices`, collated in order (no worker processes)."""
    for k in range(0, len(indices), batch_size):
        yield collate([dataset[i] for i in indices[k:k + batch_size]])


def save_similarity(path: str | Path, matrices: dict[str, np.ndarray], num_samples: int) -> Path:
    with atomic_path(path) as tmp:
        np.savez(tmp, num_samples=np.int64(num_samples), **{k: v.astype(np.float32) for k, v in matrices.items()})
    return Path(path)


def load_similarity(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k in VARIANTS}
