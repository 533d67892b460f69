"""Conversation text -> token ids and label masks, LLaVA's way (`tokenizer_image_token`) and the way
a processor with an `<image>` special token does it (chat templates): the lowest layer of
`mmln.data.templates`, which re-exports these names."""
from __future__ import annotations

from typing import Any, Sequence

from mmln.base.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

DEFAULT_IMAGE_TOKEN = "<image>"


class ConversationError(ValueError):
    """A record's conversation cannot be turned into a training sample; `reason` is a short key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def special_tokens(tokenizer: Any) -> list[str]:
    """Every special token's text (added tokens flagged special too, e.g. Llama-3's <|eot_id|>)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return list(dict.fromkeys([*tokenizer.all_special_tokens, *(t.content for t in added.values() if t.special)]))


def _encode_chunks(tokenizer: Any, texts: list[str], add_special_tokens: bool = True,
                   after_image: Sequence[bool] = ()) -> list[list[int]]:
    """Tokenize each text on its own, with the tokenizer's special tokens (LLaMA: BOS) unless
    `add_special_tokens=False` (chat templates write BOS into the text themselves).

    Texts flagged in `after_image` follow an image and are tokenized as text right after a special
    token (behind the EOS token, whose ids are then cut off): that is how a processor whose `<image>`
    is a special token (transformers' LlavaProcessor, vLLM) tokenizes them; a SentencePiece
    tokenizer with the "first" prepend scheme (non-legacy LLaMA, Mistral) puts no "▁" there, where
    a text tokenized alone gets one. Chat-template runs use it (they are consumed by those tools);
    LLaVA's templates keep LLaVA's own chunk-by-chunk tokenization."""
    if add_special_tokens:
        texts = sentencepiece_spaces(tokenizer, texts)
    anchor = tokenizer.eos_token or tokenizer.unk_token
    head = tokenizer(anchor, add_special_tokens=False)["input_ids"] if anchor else []
    flags = list(after_image) + [False] * (len(texts) - len(after_image))
    batch = [anchor + t if f and head else t for t, f in zip(texts, flags)]
    out = []
    for ids, f in zip(tokenizer(batch, add_special_tokens=add_special_tokens)["input_ids"], flags):
        ids = list(ids)
        if f and head:
            if ids[: len(head)] != head:
                raise ValueError(f"tokenizing after an image: '{anchor}' does not tokenize to itself at the start")
            ids = ids[len(head):]
        out.append(ids)
    return out


def sentencepiece_spaces(tokenizer: Any, texts: list[str]) -> list[str]:
    """LLaVA's slow SentencePiece tokenizer encodes each piece of text (a chunk between `<image>`s;
    with `legacy`, also the text after a special token) with its dummy prefix, so text starting
    with a space starts with two "▁". transformers 5's Metaspace adds no prefix to text that already
    starts with a space: where the tokenizer does that (" a" tokenizes as "a" does), one more space
    gives SentencePiece's ids back. Other tokenizers (byte-level BPE) are left alone."""
    specials = [t for t in special_tokens(tokenizer) if t]
    after = [f"{t} " for t in specials]
    if not any(t.startswith(" ") or any(a in t for a in after) for t in texts):
        return texts
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    if enc(" a") != enc("a"):
        return texts
    special = specials[0] if specials else None
    legacy = special is not None and enc(f"{special} a")[-1:] == enc(f"{special}a")[-1:]
    out = []
    for t in texts:
        t = " " + t if t.startswith(" ") else t
        if legacy:
            for a in after:
                t = t.replace(a, a + " ")
        out.append(t)
    return out


def _join_chunks(chunks: list[list[int]], bos: int | None) -> list[int]:
    out: list[int] = []
    for k, ids in enumerate(chunks):
        if k > 0:
            out.append(IMAGE_TOKEN_INDEX)
            if bos is not None and ids[:1] == [bos]:
                ids = ids[1:]
        out += ids
    return out


def tokenizer_image_token(prompt: str, tokenizer: Any, add_special_tokens: bool = True) -> list[int]:
    """LLaVA's `tokenizer_image_token`: chunks split at `<image>`, tokenized separately, the
    image slot (-200) between them, BOS only from the first chunk."""
    texts = prompt.split(DEFAULT_IMAGE_TOKEN)
    chat = not add_special_tokens  # chat templates: text after an image as after a special token
    chunks = _encode_chunks(tokenizer, texts, add_special_tokens, [chat and k > 0 for k in range(len(texts))])
    return _join_chunks(chunks, tokenizer.bos_token_id)


def tokenize_segments(
    segments: Sequence[tuple[str, bool]], tokenizer: Any, add_special_tokens: bool = True
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of rendered segments; labels = ids on supervised segments, else -100.

    input_ids are the full-string `tokenizer_image_token` ids, as LLaVA feeds them. Segment k
    spans the ids between the tokenizations of the prefixes ending at its two boundaries; only
    the chunk (between `<image>`s) holding a boundary is re-tokenized, all in one batch call.
    Raises `ConversationError("mask_mismatch")` when a prefix's ids are not a prefix of the
    full ids (the segments' concatenation would differ from the full-string tokenization).
    """
    text = "".join(s for s, _ in segments)
    chunks = text.split(DEFAULT_IMAGE_TOKEN)
    bounds, pos = [], 0
    for s, _ in segments:
        pos += len(s)
        bounds.append(pos)
    partial: list[tuple[int, str]] = []  # per boundary: (chunk index, prefix of that chunk)
    for b in bounds[:-1]:
        head = text[:b].split(DEFAULT_IMAGE_TOKEN)
        partial.append((len(head) - 1, head[-1]))
    chat = not add_special_tokens  # chat templates: text after an image as after a special token
    after = [chat and k > 0 for k in range(len(chunks))] + [chat and c > 0 for c, _ in partial]
    encoded = _encode_chunks(tokenizer, chunks + [p for _, p in partial], add_special_tokens, after)
    full_chunks, part_ids = encoded[: len(chunks)], encoded[len(chunks) :]
    bos = tokenizer.bos_token_id
    ids = _join_chunks(full_chunks, bos)
    ends = []
    for (c, _), pid in zip(partial, part_ids):
        prefix = _join_chunks(full_chunks[:c] + [pid], bos)
        if ids[: len(prefix)] != prefix:
            raise ConversationError(
                "mask_mismatch",
                f"segment boundary at char {bounds[len(ends)]} does not fall on a token boundary of the full prompt",
            )
        ends.append(len(prefix))
    ends.append(len(ids))
    labels, start = [IGNORE_INDEX] * len(ids), 0
    for (_, sup), end in zip(segments, ends):
        if end < start:
            raise ConversationError("mask_mismatch", "segment token spans are not increasing")
        if sup:
            labels[start:end] = [i if i != IMAGE_TOKEN_INDEX else IGNORE_INDEX for i in ids[start:end]]
        start = end
    return ids, labels
