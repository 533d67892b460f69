"""The multimodal LLM: frozen vision encoder -> connector -> LLM decoder (LLaVA v1 style).

Read top to bottom:
1. `encode_images`  pixels -> frozen patch features (pure; a sweep may cache its output),
2. `project`        features -> LLM-space image embeddings (the connector),
3. `splice`         replace each image placeholder id (-200) by its image embeddings, labels -100
                    there, truncate to `max_length` AFTER expansion, re-pad (right for training,
                    left for generation),
4. `forward`        token-level mean cross-entropy over every supervised token of the micro-batch,
5. `generate`       batched, KV-cached decoding that stops at the end-of-turn token(s).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmln.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mmln.model.layout import llm_decoder


@dataclass
class MLLMOutput:
    loss: Optional[torch.Tensor]
    logits: torch.Tensor
    n_tokens: int  # supervised (label != -100) next-token targets in the micro-batch


@dataclass
class Spliced:
    inputs_embeds: torch.Tensor  # (B, T, D)
    attention_mask: torch.Tensor  # (B, T) long
    labels: Optional[torch.Tensor]  # (B, T) or None
    image_mask: torch.Tensor  # (B, T) bool: positions holding image embeddings


class MLLM(nn.Module):
    def __init__(self, vision: nn.Module, connector: nn.Module, llm: nn.Module, max_length: int = 2048):
        super().__init__()
        self.vision = vision
        self.connector = connector
        self.llm = llm
        self.max_length = max_length

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
               padding_side: str = "right") -> Spliced:
        """Image i of the batch (in order) replaces the i-th placeholder met scanning the batch."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text = self.llm.get_input_embeddings()(input_ids.clamp(min=0))
        dtype = text.dtype if image_embeds is None else torch.promote_types(text.dtype, image_embeds.dtype)
        n_placeholders = int((input_ids == IMAGE_TOKEN_INDEX).sum())
        n_images = 0 if image_embeds is None else image_embeds.shape[0]
        if n_placeholders != n_images:
            raise ValueError(f"batch has {n_placeholders} image placeholders but {n_images} images")

        seqs, labs, imgs = [], [], []
        k = 0
        for b in range(input_ids.shape[0]):
            keep = attention_mask[b].bool()
            ids, emb = input_ids[b][keep], text[b][keep].to(dtype)
            lab = labels[b][keep] if labels is not None else torch.full_like(ids, IGNORE_INDEX)
            e_parts, l_parts, m_parts, start = [], [], [], 0
            for pos in (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist():
                img = image_embeds[k].to(dtype)
                k += 1
                e_parts += [emb[start:pos], img]
                l_parts += [lab[start:pos], lab.new_full((img.shape[0],), IGNORE_INDEX)]
                m_parts += [ids.new_zeros(pos - start, dtype=torch.bool), ids.new_ones(img.shape[0], dtype=torch.bool)]
                start = pos + 1
            e_parts.append(emb[start:])
            l_parts.append(lab[start:])
            m_parts.append(ids.new_zeros(len(ids) - start, dtype=torch.bool))
            seqs.append(torch.cat(e_parts)[: self.max_length])
            labs.append(torch.cat(l_parts)[: self.max_length])
            imgs.append(torch.cat(m_parts)[: self.max_length])

        T = max(len(s) for s in seqs)
        B, D = len(seqs), text.shape[-1]
        out_e = text.new_zeros(B, T, D, dtype=dtype)
        out_l = input_ids.new_full((B, T), IGNORE_INDEX)
        out_m = input_ids.new_zeros(B, T)
        out_i = torch.zeros(B, T, dtype=torch.bool, device=input_ids.device)
        for b, (s, l, m) in enumerate(zip(seqs, labs, imgs)):
            sl = slice(0, len(s)) if padding_side == "right" else slice(T - len(s), T)
            out_e[b, sl], out_l[b, sl], out_m[b, sl], out_i[b, sl] = s, l, 1, m
        return Spliced(out_e, out_m, out_l if labels is not None else None, out_i)

    def embed_batch(self, input_ids, attention_mask=None, labels=None, pixel_values=None,
                    image_features=None, padding_side: str = "right") -> Spliced:
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values)
        image_embeds = None if image_features is None else self.project(image_features)
        return self.splice(input_ids, image_embeds, attention_mask, labels, padding_side)

    # 4 ------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, pixel_values: Optional[torch.Tensor] = None,
                image_features: Optional[torch.Tensor] = None) -> MLLMOutput:
        s = self.embed_batch(input_ids, attention_mask, labels, pixel_values, image_features)
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
