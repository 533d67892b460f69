"""The torch Dataset of both stages, its collate, and bad-sample accounting (no Lightning here).

Mirrors LLaVA's `LazySupervisedDataset` + `DataCollatorForSupervisedDataset`: records are
decoded lazily in `__getitem__` (image + template + label mask), collate right-pads input_ids
with the tokenizer's pad id (LLaMA: `<unk>` = 0) and labels with -100, and stacks the images.

Bad input never kills a run by accident. With `on_bad_sample="skip"`, `__getitem__` returns a
small marker `{"bad": reason, "id", "file", "detail"}` instead of a sample; collate drops the
markers and passes them on as `batch["bad"] = [(id, reason), ...]` (counts made in DataLoader
worker processes would be invisible to the trainer, the batch carries them instead); a batch
left with no good sample has `batch["empty"] = True` so the training step can skip it.
`BadSampleLog` accumulates `batch["bad"]` in the training loop. With `on_bad_sample="error"`,
`BadSampleError` names the file, the record id and the reason.

Reasons: missing_image, image_outside_folder (an `image` path that leaves the image folder, with
`../` or as an absolute path), corrupt_image, truncated_image, malformed, no_assistant,
missing_image_token, repeated_image_token, mask_mismatch, no_supervised_tokens (nothing
supervised left once the model cuts the sequence to `max_length` after image expansion),
template_error (`data.template=chat_template`: the tokenizer's template refused the conversation),
image_too_large (the image header's size exceeds `data.max_image_pixels`, `data.max_image_aspect` or,
padded to square, `data.max_padded_pixels`: refused before a pixel is decoded).
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from PIL import Image, UnidentifiedImageError

from mmln.base.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

from .images import ImageProcessor, ImageTooLargeError, load_image
from .records import Record
from .templates import ConversationError, tokenize_conversation

# DataLoader workers are the parallelism; keeps tokenizers quiet (and safe) after fork.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REASONS = (
    "missing_image",
    "image_outside_folder",
    "corrupt_image",
    "truncated_image",
    "malformed",
    "no_assistant",
    "missing_image_token",
    "repeated_image_token",
    "mask_mismatch",
    "no_supervised_tokens",
    "template_error",
    "image_too_large",
    "image_truncated",
)


class BadSampleError(RuntimeError):
    """A bad sample under `data.on_bad_sample=error`. Built from one message string so that a
    DataLoader worker can re-raise it in the main process; the message names file, id, reason (torch
    re-raises it with the worker's traceback as the message: kept to the one line it had)."""

    def __init__(self, message: str):
        if "Original Traceback" in message:  # torch's ExceptionWrapper.reraise
            message = message.rstrip().rsplit("\n", 1)[-1].split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)

    @classmethod
    def of(cls, file: str, record_id: str, reason: str, detail: str = "", index: Optional[int] = None) -> "BadSampleError":
        where = f" (index {index})" if index is not None else ""
        err = cls(f"bad sample in {file}: record id {record_id!r}{where}: {reason}" + (f" ({detail})" if detail else ""))
        err.file, err.record_id, err.reason = file, record_id, reason
        return err


class _Bad(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


BadSample = _Bad  # raised by dataset variants (mmln.data.processor) for a bad record


def truncate(
    input_ids: list[int], labels: list[int], num_image_tokens: int, max_length: Optional[int]
) -> tuple[list[int], list[int]]:
    """Cut text so that it holds what the model keeps after image expansion and truncation to
    `max_length`: every token whose expanded start position is < max_length (LLaVA cuts the
    expanded sequence, so the result is the same, only cheaper to collate)."""
    if max_length is None:
        return input_ids, labels
    pos = 0
    for k, t in enumerate(input_ids):
        if pos >= max_length:
            return input_ids[:k], labels[:k]
        pos += num_image_tokens if t == IMAGE_TOKEN_INDEX else 1
    return input_ids, labels


class LlavaDataset(torch.utils.data.Dataset):
    """LLaVA records -> {"id", "input_ids", "labels", "pixel_values"} (or a bad-sample marker).
    A record without an "image" key is a text-only sample (pixel_values None, no image slot);
    "image" is a path under the split's one image root, sub-folders included (coco/train2017/...)."""

    def __init__(
        self,
        records: Sequence[Record],
        tokenizer: Any,
        *,
        template: str,
        image_processor: ImageProcessor,
        num_image_tokens: int = 256,
        max_length: Optional[int] = 2048,
        on_bad_sample: str = "skip",
    ):
        if on_bad_sample not in ("skip", "error"):
            raise ValueError(f"on_bad_sample={on_bad_sample!r} is not one of skip, error")
        self.records = records
        self.tokenizer = tokenizer
        self.template = template
        self.image_processor = image_processor
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.on_bad_sample = on_bad_sample

    def __len__(self) -> int:
        return len(self.records)

    # ---- the two halves, also used by `check` and the benchmark
    def encode_text(self, rec: Record) -> tuple[list[int], list[int], bool]:
        """(input_ids, labels, truncated) of a record, or raises `_Bad`."""
        raw = rec.raw
        if not isinstance(raw, dict) or "conversations" not in raw:
            raise _Bad("malformed", "record is not an object with 'conversations'")
        has_image = "image" in raw  # no "image" key: a text-only record (LLaVA-1.5's ShareGPT ones)
        if has_image and (not isinstance(raw.get("image"), str) or not raw["image"]):
            raise _Bad("malformed", "record's 'image' is not a path")
        try:
            ids, labels = tokenize_conversation(self.template, raw["conversations"], self.tokenizer, image=has_image)
        except ConversationError as e:
            raise _Bad(e.reason, e.detail) from None
        kept_ids, kept_labels = truncate(ids, labels, self.num_image_tokens, self.max_length)
        if all(label == IGNORE_INDEX for label in kept_labels):
            raise _Bad("no_supervised_tokens", f"{len(ids)} ids, nothing supervised within max_length={self.max_length}")
        return kept_ids, kept_labels, len(kept_ids) < len(ids)

    def lengths(self) -> list[int]:
        """Every sample's length after image expansion and truncation (the positions the LLM sees),
        from the text alone (no image decoded); a bad record counts 0. Length-grouped batching and
        the `data/pad_fraction` metric use it."""
        out = []
        for rec in self.records:
            try:
                ids, _, _ = self.encode_text(rec)
            except _Bad:
                out.append(0)
                continue
            n = len(ids) + sum(self.num_image_tokens - 1 for t in ids if t == IMAGE_TOKEN_INDEX)
            out.append(n if self.max_length is None else min(n, self.max_length))
        return out

    def image_path(self, rec: Record) -> Path:
        return Path(rec.image_folder) / rec.raw["image"]

    def load_image(self, rec: Record) -> Image.Image:
        """The record's image as RGB, or raises `_Bad`."""
        path = self.image_path(rec)
        folder = os.path.abspath(rec.image_folder)  # lexical (abspath normalises): symlinked folders stay fine
        if os.path.commonpath([folder, os.path.abspath(path)]) != folder:
            raise _Bad("image_outside_folder", f"{rec.raw['image']!r} resolves outside the image folder {folder}")
        proc = self.image_processor  # its cost limits and pad-to-square, checked from the header
        try:
            return load_image(path, getattr(proc, "limits", None), getattr(proc, "pad", False))
        except FileNotFoundError:
            raise _Bad("missing_image", str(path)) from None
        except ImageTooLargeError as e:
            raise _Bad("image_too_large", str(e)) from None
        except UnidentifiedImageError as e:
            raise _Bad("corrupt_image", f"{path}: {e}") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            reason = "truncated_image" if "truncated" in str(e).lower() else "corrupt_image"
            raise _Bad(reason, f"{path}: {e}") from None

    def _bad(self, i: int, rec: Record, bad: _Bad) -> dict[str, Any]:
        if self.on_bad_sample == "error":
            raise BadSampleError.of(rec.file, rec.id, bad.reason, bad.detail, index=i) from None
        return {"bad": bad.reason, "id": rec.id, "file": rec.file, "detail": bad.detail}

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        pixels = None  # a text-only record has none
        try:
            ids, labels, _ = self.encode_text(rec)
            if "image" in rec.raw:
                image = self.load_image(rec)
                try:
                    pixels = self.image_processor(image)
                except Exception as e:  # a decodable image the processor cannot take (e.g. 0 px wide)
                    raise _Bad("corrupt_image", f"{self.image_path(rec)}: preprocessing failed: {e}") from None
        except _Bad as bad:
            return self._bad(i, rec, bad)
        return {
            "id": rec.id,
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "pixel_values": pixels,
        }

    def check(self, i: int) -> tuple[Optional[str], str, bool]:
        """(reason or None, detail, truncated) for record `i` without building tensors: the
        text is tokenized and masked, the image fully decoded and preprocessed."""
        rec = self.records[i]
        try:
            _, _, truncated = self.encode_text(rec)
            if "image" in rec.raw:
                self.image_processor(self.load_image(rec))
        except _Bad as bad:
            return bad.reason, bad.detail, False
        except Exception as e:  # preprocessing failure
            return "corrupt_image", f"{e}", False
        return None, "", truncated


def pad_right(ids: Sequence[Sequence[int]], pad_token_id: int, labels: Optional[Sequence[Sequence[int]]] = None
              ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Right-pad token id sequences to one (B, T) long tensor: (input_ids padded with
    `pad_token_id`, attention_mask, labels padded with IGNORE_INDEX or None). The one padding rule
    of training, analysis and evaluation batches."""
    n = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), n), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), n), dtype=torch.long)
    out_labels = None if labels is None else torch.full((len(ids), n), IGNORE_INDEX, dtype=torch.long)
    for k, x in enumerate(ids):
        input_ids[k, :len(x)] = torch.as_tensor(x, dtype=torch.long)
        attention_mask[k, :len(x)] = 1
        if out_labels is not None:
            out_labels[k, :len(x)] = torch.as_tensor(labels[k], dtype=torch.long)
    return input_ids, attention_mask, out_labels


class Collator:
    """Right-pad input_ids with `pad_token_id` and labels with -100, build attention_mask, stack
    images; bad-sample markers are dropped and listed as batch["bad"] = [(id, reason), ...]."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        good = [s for s in samples if "bad" not in s]
        bad = [(s["id"], s["bad"]) for s in samples if "bad" in s]
        if not good:
            return {
                "ids": [],
                "input_ids": torch.zeros(0, 0, dtype=torch.long),
                "labels": torch.zeros(0, 0, dtype=torch.long),
                "attention_mask": torch.zeros(0, 0, dtype=torch.long),
                "pixel_values": torch.zeros(0),
                "bad": bad,
                "empty": True,
            }
        input_ids, attention_mask, labels = pad_right([s["input_ids"] for s in good], self.pad_token_id,
                                                      [s["labels"] for s in good])
        return {
            "ids": [s["id"] for s in good],
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            # text-only samples have no image (None when the batch has none at all)
            "pixel_values": torch.stack(images) if (images := [s["pixel_values"] for s in good
                                                               if s["pixel_values"] is not None]) else None,
            "bad": bad,
            "empty": False,
        }


class BadSampleLog:
    """Counts of skipped samples by reason, with the first `keep_ids` record ids of each;
    fed from `batch["bad"]` by the training loop, summarised at the end of each epoch."""

    def __init__(self, keep_ids: int = 20):
        self.keep_ids = keep_ids
        self.counts: Counter[str] = Counter()
        self.ids: dict[str, list[str]] = {}

    def add(self, bad: Sequence[tuple[str, str]]) -> None:
        for rid, reason in bad:
            self.counts[reason] += 1
            kept = self.ids.setdefault(reason, [])
            if len(kept) < self.keep_ids:
                kept.append(str(rid))

    extend = add

    def update(self, batch: dict[str, Any]) -> None:
        """Add a collated batch's `bad` list."""
        self.add(batch.get("bad", ()))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)

    def reset(self) -> None:
        self.counts.clear()
        self.ids.clear()

    def summary(self) -> str:
        if not self.total:
            return "bad samples: none"
        parts = []
        for reason, n in self.counts.most_common():
            ids = self.ids.get(reason, [])
            more = ", ..." if n > len(ids) else ""
            parts.append(f"{reason}={n} [{', '.join(ids)}{more}]")
        return f"bad samples skipped: {self.total} ({'; '.join(parts)})"


def build_datasets(cfg: Any, tokenizer: Any, num_image_tokens: int) -> tuple[LlavaDataset, Optional[LlavaDataset]]:
    """(train, val or None) from a run config: `cfg.data` (files, template, aspect, policy) and
    `cfg.model` (vision preprocessing, max_length). `num_image_tokens`: positions one image takes,
    from the vision encoder (`mllm.vision.num_patches`, or `mmln.base.constants.image_positions`)."""
    from .images import ImageLimits, build_image_processor
    from .records import load_train_val

    train, val = load_train_val(cfg.data)
    vision = cfg.model.vision
    kw = dict(
        template=cfg.data.template,
        image_processor=build_image_processor(vision, cfg.data.image_aspect, ImageLimits.of(cfg.data)),
        num_image_tokens=num_image_tokens,
        max_length=cfg.model.max_length,
        on_bad_sample=cfg.data.on_bad_sample,
    )
    return LlavaDataset(train, tokenizer, **kw), (LlavaDataset(val, tokenizer, **kw) if val else None)


def pad_token_id(tokenizer: Any) -> int:
    """The pad id collate uses: the tokenizer's pad, else unk (LLaVA: pad = unk = 0), else 0."""
    for tid in (tokenizer.pad_token_id, getattr(tokenizer, "unk_token_id", None)):
        if tid is not None:
            return int(tid)
    return 0
