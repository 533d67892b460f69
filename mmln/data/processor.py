"""LLaVA records through a native VLM's own processor and chat template (Qwen2.5-VL, SmolVLM,
LLaVA-OneVision, Gemma-3, ...).

A record (`conversations` of human / gpt turns, `<image>` marking the image, or a text-only
mix665k-style record) becomes the family's messages (`{"role", "content": [{"type": "image"},
{"type": "text", ...}]}`), rendered by the processor's chat template; the processor makes the pixel
inputs (any resolution, tiles, `image_grid_thw`, ...) and expands the image tokens.

Labels supervise exactly the assistant turns: the span of answer k is found in the rendered text
(the rendering of the turns before it is a prefix of the whole; in what turn k adds, its answer's
text through the last special token after it, the end of turn), and each span boundary is mapped
to a token position by tokenizing the text after it (no image there: its ids must be the tail of
the full ids) or, with an image after it, by running the processor on the text before it (its ids
must be a prefix of the full ids). Anything else is `mask_mismatch`, counted, never silently zeroed.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from mmln.base.constants import IGNORE_INDEX

from .dataset import BadSample as _Bad
from .dataset import Collator, LlavaDataset
from .templates import ConversationError

IMAGE = "<image>"


def record_messages(conversations: Sequence[dict]) -> tuple[list[dict], int]:
    """(messages for `apply_chat_template`, images) of a LLaVA conversation with at least one answer."""
    messages, n_images = turn_messages(conversations)
    if not any(m["role"] == "assistant" for m in messages):
        raise ConversationError("no_assistant", "the conversation has no gpt turn")
    return messages, n_images


def turn_messages(conversations: Sequence[dict]) -> tuple[list[dict], int]:
    """(messages for `apply_chat_template`, images) of LLaVA turns (a prompt may end with the human
    question); each `<image>` of a human turn becomes an image item in front of its text (where
    LLaVA puts it)."""
    messages, n_images = [], 0
    for turn in conversations:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ConversationError("malformed", "a turn is not an object with a string 'value'")
        role = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}.get(turn.get("from"))
        if role is None:
            raise ConversationError("malformed", f"turn 'from' is {turn.get('from')!r}, not human / gpt")
        k = turn["value"].count(IMAGE) if role == "user" else 0
        text = turn["value"].replace(IMAGE, "").strip() if k else turn["value"]
        messages.append({"role": role, "content": [{"type": "image"}] * k + [{"type": "text", "text": text}]})
        n_images += k
    return messages, n_images


def answer_spans(render, messages: list[dict], specials: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """(full rendered text, [(start, end)] character spans supervised: each answer through its end of turn)."""
    full = render(messages)
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(messages[:k]) if k else ""
        after = render(messages[: k + 1])
        if not (after.startswith(before) and full.startswith(after)):
            raise ConversationError("mask_mismatch", f"the chat template renders turns 1..{k + 1} differently "
                                                     "inside the whole conversation")
        added, content = after[len(before):], m["content"][-1]["text"].strip()
        at = added.rfind(content) if content else -1
        if at < 0:
            raise ConversationError("mask_mismatch", "an assistant turn's text does not occur in its rendering")
        start, end = at, at + len(content)
        while start > 0 and added[start - 1] in " \t":  # tokenizers merge the space into the answer's first token
            start -= 1
        tail = added[end:]
        end += max([tail.rfind(t) + len(t) for t in specials if t in tail] or [0])
        spans.append((len(before) + start, len(before) + end))
    return full, spans


class ProcessorDataset(LlavaDataset):
    """LLaVA records -> {"id", "input_ids", "labels", "pixel_values": {the processor's other outputs}}.

    `text_aligned`: processor outputs shaped like input_ids (Gemma-3's token_type_ids, Qwen's
    mm_token_type_ids), cut and padded like them. A sample longer than `max_length` is cut after its
    last image token, or skipped (`image_truncated`) when the cut would split an image's tokens.
    """

    def __init__(self, records, processor, *, text_aligned: Sequence[str] = (), max_length: Optional[int] = 2048,
                 on_bad_sample: str = "skip"):
        super().__init__(records, processor.tokenizer, template="processor", image_processor=None,
                         num_image_tokens=1, max_length=max_length, on_bad_sample=on_bad_sample)
        self.processor, self.text_aligned = processor, tuple(text_aligned)
        self.image_token = getattr(processor, "image_token", IMAGE)
        tok = processor.tokenizer
        # every special added token (Gemma's <end_of_turn> is special but not in all_special_tokens)
        specials = [t.content for t in tok.added_tokens_decoder.values() if t.special] + list(tok.all_special_tokens)
        self.specials = [t for t in dict.fromkeys(specials) if t and t not in (self.image_token, tok.unk_token)]

    def render(self, messages: list[dict]) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False)

    def encode(self, rec, images: list) -> dict[str, Any]:
        """The processor's outputs for a record and its decoded images, with labels; raises `_Bad`."""
        raw = rec.raw
        if not isinstance(raw, dict) or not isinstance(raw.get("conversations"), list):
            raise _Bad("malformed", "record is not an object with 'conversations'")
        try:
            messages, n_images = record_messages(raw["conversations"])
            full, spans = answer_spans(self.render, messages, self.specials)
        except ConversationError as e:
            raise _Bad(e.reason, e.detail) from None
        except Exception as e:  # the template refused the conversation (e.g. roles not alternating)
            raise _Bad("template_error", str(e).splitlines()[0][:200] if str(e) else type(e).__name__) from None
        if n_images != len(images):
            raise _Bad("missing_image_token" if n_images < len(images) else "repeated_image_token",
                       f"{n_images} <image> marks for {len(images)} image(s)")
        enc = self.run_processor(full, images)
        ids = enc.pop("input_ids")[0].tolist()
        labels = [IGNORE_INDEX] * len(ids)
        for start, end in spans:
            a, b = self.token_at(full, start, ids, images), self.token_at(full, end, ids, images)
            labels[a:b] = ids[a:b]
        enc.pop("attention_mask", None)
        return self.cut(ids, labels, enc)

    def run_processor(self, text: str, images: list) -> dict[str, Any]:
        try:
            out = self.processor(text=[text], images=[images] if images else None, add_special_tokens=False,
                                 return_tensors="pt")
        except Exception as e:  # a decodable image the processor cannot take
            raise _Bad("corrupt_image", f"preprocessing failed: {str(e).splitlines()[0][:200]}") from None
        return dict(out)

    def token_at(self, full: str, pos: int, ids: list[int], images: list) -> int:
        """The token index where character `pos` of the rendered text starts in the expanded ids."""
        tail = full[pos:]
        if self.image_token not in tail:
            t = self.tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
            if t == ids[len(ids) - len(t):]:
                return len(ids) - len(t)
            raise _Bad("mask_mismatch", f"the text after char {pos} does not tokenize to the tail of the prompt")
        head = full[:pos]
        n = head.count(self.image_token)
        p = self.run_processor(head, images[:n])["input_ids"][0].tolist()
        if p != ids[: len(p)]:
            raise _Bad("mask_mismatch", f"the text before char {pos} does not tokenize to a prefix of the prompt")
        return len(p)

    def cut(self, ids: list[int], labels: list[int], enc: dict[str, Any]) -> dict[str, Any]:
        if self.max_length is not None and len(ids) > self.max_length:
            image_ids = set(self.processor.image_ids) if hasattr(self.processor, "image_ids") else {
                self.tokenizer.convert_tokens_to_ids(self.image_token)}
            if any(i in image_ids for i in ids[self.max_length:]):
                raise _Bad("image_truncated", f"{len(ids)} tokens after image expansion; max_length="
                                              f"{self.max_length} would cut an image's tokens")
            ids, labels = ids[: self.max_length], labels[: self.max_length]
            for k in self.text_aligned:
                if k in enc:
                    enc[k] = enc[k][:, : self.max_length]
        if all(x == IGNORE_INDEX for x in labels[1:]):
            raise _Bad("no_supervised_tokens", f"{len(ids)} ids, nothing supervised within max_length={self.max_length}")
        return {"input_ids": ids, "labels": labels, "extra": enc}

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        try:
            images = [self.load_image(rec)] if isinstance(rec.raw, dict) and "image" in rec.raw else []
            out = self.encode(rec, images)
        except _Bad as bad:
            return self._bad(i, rec, bad)
        return {"id": rec.id, "input_ids": torch.tensor(out["input_ids"]), "labels": torch.tensor(out["labels"]),
                "pixel_values": out["extra"] or None}

    def check(self, i: int):
        rec = self.records[i]
        try:
            images = [self.load_image(rec)] if isinstance(rec.raw, dict) and "image" in rec.raw else []
            self.encode(rec, images)
        except _Bad as bad:
            return bad.reason, bad.detail, False
        return None, "", False

    def blank_image_inputs(self, size: int = 64) -> dict[str, torch.Tensor]:
        """The processor's image outputs (pixel_values, image_grid_thw, ...) for one blank image: what
        `train.strategy=fsdp2` runs through the vision unit on a micro-batch without images, so that
        every rank takes part in its collectives (`NativeVLM.forward`, `blank_image`)."""
        from PIL import Image

        messages, _ = record_messages([{"from": "human", "value": f"{IMAGE}\n?"}, {"from": "gpt", "value": "."}])
        out = self.run_processor(self.render(messages), [Image.new("RGB", (size, size))])
        return {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask", *self.text_aligned)}

    def lengths(self) -> list[int]:
        """Every sample's length after the processor's image expansion (images decoded: exact, slower
        than LLaVA's text-only count); a bad record counts 0."""
        out = []
        for i in range(len(self)):
            s = self[i]
            out.append(0 if "bad" in s else len(s["input_ids"]))
        return out


def _pad_to(t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    pad = []
    for have, want in zip(reversed(t.shape), reversed(shape)):
        pad += [0, want - have]
    return torch.nn.functional.pad(t, pad)


class ProcessorCollator:
    """Right-pads input_ids (pad id), labels (-100), attention_mask and the `text_aligned` outputs (0);
    concatenates every other processor output along its first dimension, zero-padding the other
    dimensions to the batch's largest (as the processor pads a batch it is given whole)."""

    def __init__(self, pad_token_id: int, text_aligned: Sequence[str] = (), blank_image: Optional[dict] = None):
        self.base, self.text_aligned = Collator(pad_token_id), tuple(text_aligned)
        self.blank_image = blank_image  # fsdp2: a blank image's inputs for a batch without images

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        good = [s for s in samples if "bad" not in s]
        extras = [s["pixel_values"] or {} for s in good]
        batch = self.base([{**s, "pixel_values": None} if "bad" not in s else s for s in samples])
        if batch["empty"]:
            return batch
        B, T = batch["input_ids"].shape
        out: dict[str, torch.Tensor] = {}
        for k in dict.fromkeys(k for e in extras for k in e):
            rows = [(b, e[k]) for b, e in enumerate(extras) if k in e]
            if k in self.text_aligned:
                out[k] = torch.zeros(B, T, dtype=rows[0][1].dtype)
                for b, t in rows:
                    out[k][b, : t.shape[-1]] = t[0]
                continue
            parts = [t for _, t in rows]
            shape = [max(p.shape[d] for p in parts) for d in range(parts[0].dim())]
            out[k] = torch.cat([_pad_to(p, [p.shape[0], *shape[1:]]) for p in parts])
        batch["pixel_values"] = out or None
        if self.blank_image is not None and "pixel_values" not in out:
            batch["blank_image"] = self.blank_image
        return batch
