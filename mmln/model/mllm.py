"""The multimodal LLM: frozen vision encoder -> connector -> LLM decoder (LLaVA v1 style).

Read top to bottom:
1. `encode_images`  pixels -> frozen patch features (pure; a sweep may cache its output),
2. `project`        features -> LLM-space image embeddings (the connector),
3. `splice`         replace each image placeholder id (-200) by its image embeddings, labels -100
                    there, truncate to `max_length` AFTER expansion, re-pad (right for training,
                    left for generation),
4. `forward`        token-level mean cross-entropy over every supervised token of the micro-batch,
                    in chunks of `loss_chunk` positions (`chunked_cross_entropy`: no full logits),
5. `generate`       batched, KV-cached decoding that stops at the end-of-turn token(s).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmln.base.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX, pack_rows
from mmln.model.layout import base_llm, llm_decoder


@dataclass
class MLLMOutput:
    loss: Optional[torch.Tensor]
    logits: Optional[torch.Tensor]  # None when the loss was computed in chunks (the logits never exist whole)
    n_tokens: int | torch.Tensor  # supervised (label != -100) next-token targets; a device tensor when chunked


@dataclass
class Spliced:
    inputs_embeds: torch.Tensor  # (B, T, D)
    attention_mask: torch.Tensor  # (B, T) long
    labels: Optional[torch.Tensor]  # (B, T) or None
    image_mask: torch.Tensor  # (B, T) bool: positions holding image embeddings
    host_attention_mask: Optional[torch.Tensor] = None  # the same mask, on the CPU


class HostBatch:
    """CPU copies of a batch's input_ids / attention_mask / labels (`.cpu()` of device tensors:
    that copy is a host sync, so a training step should build it before the batch moves). Not a
    dataclass or a collection on purpose: Lightning's batch transfer leaves it on the CPU."""

    __slots__ = ("input_ids", "attention_mask", "labels")

    def __init__(self, input_ids, attention_mask=None, labels=None):
        cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
        self.input_ids, self.attention_mask, self.labels = cpu(input_ids), cpu(attention_mask), cpu(labels)


def _ce_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: Optional[float]) -> torch.Tensor:
    logits = head(hidden)
    if softcap:  # Gemma-2's final logit soft-capping, as its CausalLM head applies it
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_cross_entropy(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, chunk: int,
                          softcap: Optional[float] = None):
    """(mean next-token cross-entropy, supervised-token count) from the last hidden states.

    The LM head and the fp32 log-softmax run `chunk` positions at a time under non-reentrant
    activation checkpointing, so neither the (B, T, V) logits nor their fp32 copy ever exist
    whole: each chunk's are rebuilt in the backward pass and freed. Equal to cross-entropy over the
    full fp32 logits (token mean over label != -100) up to summation order. No host sync: the count
    stays a device tensor, and a micro-batch with nothing supervised gives a zero loss that keeps
    the graph (every DDP rank must backward).
    """
    from torch.utils.checkpoint import checkpoint

    targets = labels[:, 1:].reshape(-1)
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], chunk):
        total = total + checkpoint(_ce_sum, head, h[i:i + chunk], targets[i:i + chunk], softcap, use_reentrant=False)
    n = (targets != IGNORE_INDEX).sum()
    return total / n.clamp(min=1), n


class MLLM(nn.Module):
    def __init__(self, vision: nn.Module, connector: nn.Module, llm: nn.Module, max_length: int = 2048,
                 loss_chunk: int = 1024):
        super().__init__()
        self.loss_chunk = loss_chunk  # tokens per cross-entropy chunk; 0 = full logits (see chunked_cross_entropy)
        self.vision = vision
        self.connector = connector
        self.llm = llm
        self.max_length = max_length
        self.pack_samples = False  # data.batching=packed: a training micro-batch's samples share rows (see pack)

    # 1 ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values)

    # 2 ------------------------------------------------------------------------------------------
    def project(self, features: torch.Tensor) -> torch.Tensor:
        weight = next(self.connector.parameters())
        return self.connector(features.to(weight.dtype))

    # 3 ------------------------------------------------------------------------------------------
    def splice(self, input_ids: torch.Tensor, image_embeds: Optional[torch.Tensor],
               attention_mask: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
               padding_side: str = "right", host: Optional["HostBatch"] = None) -> Spliced:
        """Image i of the batch (in order) replaces the i-th placeholder met scanning the batch.

        Where every position comes from is worked out on the host, from `host` (CPU copies of
        input_ids / attention_mask / labels, e.g. kept by the training step before the batch
        moved to the GPU) or from CPU copies of the arguments: with `host` given, splicing never
        reads device memory (no host sync); the embeddings are then gathered in one indexing op.
        """
        if host is None:
            host = HostBatch(input_ids, attention_mask, labels)
        ids_h = host.input_ids
        mask_h = host.attention_mask if host.attention_mask is not None else torch.ones_like(ids_h)
        lab_h = host.labels
        text = self.llm.get_input_embeddings()(input_ids.clamp(min=0))
        dtype = text.dtype if image_embeds is None else torch.promote_types(text.dtype, image_embeds.dtype)
        is_img_all = ids_h == IMAGE_TOKEN_INDEX
        n_placeholders = int(is_img_all.sum())
        n_images = 0 if image_embeds is None else image_embeds.shape[0]
        if n_placeholders != n_images:
            raise ValueError(f"batch has {n_placeholders} image placeholders but {n_images} images")

        B, L = ids_h.shape
        P = 0 if image_embeds is None else image_embeds.shape[1]
        image_base, zero_row = B * L, B * L + n_images * P  # rows of the gather table (text | images | 0)
        srcs, labs, imgs, k = [], [], [], 0
        for b in range(B):
            j = mask_h[b].bool().nonzero().flatten()
            is_img = is_img_all[b, j]
            width = torch.where(is_img, P, 1)
            nth = k + is_img.long().cumsum(0) - 1  # the image index of each placeholder
            start = torch.where(is_img, image_base + nth * P, b * L + j)
            offset = torch.arange(int(width.sum())) - torch.repeat_interleave(width.cumsum(0) - width, width)
            src = torch.repeat_interleave(start, width) + offset * torch.repeat_interleave(is_img, width)
            lab = lab_h[b, j] if lab_h is not None else torch.full_like(j, IGNORE_INDEX)
            srcs.append(src[: self.max_length])
            labs.append(torch.repeat_interleave(lab.masked_fill(is_img, IGNORE_INDEX), width)[: self.max_length])
            imgs.append(torch.repeat_interleave(is_img, width)[: self.max_length])
            k += int(is_img.sum())

        T = max(len(x) for x in srcs)
        out_s = torch.full((B, T), zero_row, dtype=torch.long)
        out_l = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        out_m = torch.zeros(B, T, dtype=torch.long)
        out_i = torch.zeros(B, T, dtype=torch.bool)
        for b, (src, lab, img) in enumerate(zip(srcs, labs, imgs)):
            sl = slice(0, len(src)) if padding_side == "right" else slice(T - len(src), T)
            out_s[b, sl], out_l[b, sl], out_m[b, sl], out_i[b, sl] = src, lab, 1, img
        D, dev = text.shape[-1], text.device
        parts = [text.reshape(B * L, D).to(dtype)]
        if image_embeds is not None:
            parts.append(image_embeds.reshape(-1, D).to(dtype))
        table = torch.cat(parts + [text.new_zeros(1, D, dtype=dtype)])
        to = dict(device=dev, non_blocking=True)
        return Spliced(table[out_s.to(**to)], out_m.to(**to), out_l.to(**to) if lab_h is not None else None,
                       out_i.to(**to), out_m)

    def embed_batch(self, input_ids, attention_mask=None, labels=None, pixel_values=None,
                    image_features=None, padding_side: str = "right", host: Optional[HostBatch] = None) -> Spliced:
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values)
        image_embeds = None if image_features is None else self.project(image_features)
        s = self.splice(input_ids, image_embeds, attention_mask, labels, padding_side, host)
        # under autocast (bf16-mixed) the decoder's activations stay in the compute dtype: without
        # this cast an fp32 trainable embedding table or connector makes every layer's residual
        # stream fp32 (the trainable master weights themselves stay fp32)
        dev = s.inputs_embeds.device.type
        if dev != "meta" and torch.is_autocast_enabled(dev):
            s.inputs_embeds = s.inputs_embeds.to(torch.get_autocast_dtype(dev))
        return s

    # 4 ------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, pixel_values: Optional[torch.Tensor] = None,
                image_features: Optional[torch.Tensor] = None, host: Optional[HostBatch] = None) -> MLLMOutput:
        """With `host` and `loss_chunk > 0` (the training path) nothing here reads device memory."""
        s = self.embed_batch(input_ids, attention_mask, labels, pixel_values, image_features, host=host)
        if s.labels is not None and self.loss_chunk > 0:
            base = base_llm(self.llm)
            labels = s.labels
            if self.pack_samples:
                embeds, mask, position_ids, labels = self.pack(s)
                hidden = llm_decoder(self)(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                                            use_cache=False).last_hidden_state
            else:
                hidden = llm_decoder(self)(inputs_embeds=s.inputs_embeds, attention_mask=self._train_mask(s),
                                            use_cache=False).last_hidden_state
            loss, n = chunked_cross_entropy(hidden, base.get_output_embeddings(), labels, self.loss_chunk,
                                            getattr(base.config, "final_logit_softcapping", None))
            return MLLMOutput(loss, None, n)
        logits = self.llm(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask, use_cache=False).logits
        if s.labels is None:
            return MLLMOutput(None, logits, 0)
        targets = s.labels[:, 1:]
        n = int((targets != IGNORE_INDEX).sum())
        if n == 0:  # keep the graph (DDP needs every rank to backward) but contribute nothing
            return MLLMOutput(logits.sum() * 0.0, logits, 0)
        loss = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )
        return MLLMOutput(loss, logits, n)

    def pack(self, s: Spliced) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A right-padded training micro-batch (B, T) as R <= B rows of whole samples back to back
        (first-fit decreasing into rows of at most `max_length`): (inputs_embeds (R, L, D), an SDPA
        mask (R, 1, L, L) that is causal within each sample and never crosses samples, position
        ids restarting at 0 for each sample, labels). Each sample's first label is ignored, as
        it is never a target unpacked either, so the loss (mean over the same supervised tokens)
        and every gradient equal the unpacked ones. Planned on the host copy of the mask: no sync."""
        lens = s.host_attention_mask.sum(1).tolist()
        B, T = s.host_attention_mask.shape
        rows = pack_rows(lens, self.max_length)
        R, L = len(rows), max(sum(lens[b] for b in row) for row in rows)
        src = torch.full((R, L), B * T, dtype=torch.long)  # B * T: a zero row / ignored label (padding)
        seg = torch.full((R, L), -1, dtype=torch.long)
        pos = torch.zeros(R, L, dtype=torch.long)
        first = torch.zeros(R, L, dtype=torch.bool)
        for r, members in enumerate(rows):
            o = 0
            for k, b in enumerate(members):
                n = lens[b]
                src[r, o:o + n], seg[r, o:o + n], pos[r, o:o + n] = b * T + torch.arange(n), k, torch.arange(n)
                first[r, o] = True
                o += n
        e, dev = s.inputs_embeds, s.inputs_embeds.device
        to = dict(device=dev, non_blocking=True)
        src, seg, first = src.to(**to), seg.to(**to), first.to(**to)
        table = torch.cat([e.reshape(B * T, e.shape[-1]), e.new_zeros(1, e.shape[-1])])
        labels = torch.cat([s.labels.reshape(-1), s.labels.new_full((1,), IGNORE_INDEX)])[src]
        causal = torch.ones(L, L, dtype=torch.bool, device=dev).tril()
        mask = (causal[None] & (seg[:, :, None] == seg[:, None, :]))[:, None]  # padding attends to padding only
        return table[src], mask, pos.to(**to), labels.masked_fill(first, IGNORE_INDEX)

    def _train_mask(self, s: Spliced) -> torch.Tensor:
        """The attention mask for a right-padded training batch. For SDPA, the 4-D boolean
        causal-and-padding mask transformers would build itself, built here on the device: given a
        2-D mask, transformers first checks it for padding (`.all()`), a host sync every forward."""
        T = s.attention_mask.shape[1]
        window = getattr(self.llm.config, "sliding_window", None)
        if getattr(self.llm.config, "_attn_implementation", None) != "sdpa" or (window and window < T):
            return s.attention_mask  # (a sliding-window model builds its own two masks)
        causal = torch.ones(T, T, dtype=torch.bool, device=s.attention_mask.device).tril()
        return causal[None, None] & s.attention_mask.bool()[:, None, None, :]

    # 5 ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 pixel_values: Optional[torch.Tensor] = None, image_features: Optional[torch.Tensor] = None,
                 *, max_new_tokens: int = 64, eos_token_id: int | Sequence[int] | None = None,
                 pad_token_id: int = 0, do_sample: bool = False, temperature: float = 1.0,
                 top_k: Optional[int] = None) -> torch.Tensor:
        """New tokens only, (B, <= max_new_tokens), padded with `pad_token_id` after a sequence stops."""
        s = self.embed_batch(input_ids, attention_mask, None, pixel_values, image_features, padding_side="left")
        kwargs = dict(do_sample=True, temperature=temperature, top_k=top_k) if do_sample else dict(do_sample=False)
        return self.llm.generate(
            inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask, max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id, pad_token_id=pad_token_id, use_cache=True, **kwargs,
        )

    @torch.no_grad()
    def next_token_logits(self, input_ids, attention_mask=None, pixel_values=None, image_features=None) -> torch.Tensor:
        """Logits of the first generated token (B, V): scores yes/no questions without decoding."""
        s = self.embed_batch(input_ids, attention_mask, None, pixel_values, image_features, padding_side="left")
        position_ids = (s.attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.llm(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask,
                       position_ids=position_ids, use_cache=False, logits_to_keep=1)
        return out.logits[:, -1]

    # ------------------------------------------------------------------------------------------
    def decoder_layers(self) -> nn.ModuleList:
        """The LLM's decoder blocks (through a PEFT wrapper too)."""
        return llm_decoder(self).layers
