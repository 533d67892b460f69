"""The inference runner of a native family (Qwen2-VL, Qwen2.5-VL, SmolVLM, LLaVA-OneVision, Gemma-3):
the same contract as `mmln.eval.runner.Runner` (`generate`, `answer_yes_no`, `desc`), so
`mmln.evaluate`, the benchmarks, sweeps and `mmln.load(...).ask` drive it unchanged.

- Prompts: a query's LLaVA turns become the family's messages (`mmln.data.processor.turn_messages`),
  rendered by the processor's own chat template with its generation prompt; the processor makes
  the pixel inputs and expands the image tokens, for a whole batch at once, left-padded.
- Batches hold only image queries or only text-only ones (a processor takes a batch of one kind),
  sorted by prompt length (longest first); answers come back in the input order.
- Decoding: the family's own `generate` (greedy, or the `paper` profile's sampling), stopping at EOS
  and the template's end-of-turn token (`mmln.model.families.answer.end_of_turn_ids`).
- Yes/no from logits: the next-token logits, after the generation prompt, of the first token of
  "Yes" and of "No" as the template writes them as an answer.
- Data parallel under torch.distributed, as `Runner`.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from mmln.data.images import load_image
from mmln.data.processor import turn_messages
from mmln.eval.runner import Decoding, Query, data_parallel, eval_autocast, eval_bar, unsort


def end_of_turn_ids(processor) -> list[int]:
    """The template's end-of-turn token (the first special token after an answer) and EOS."""
    tok = processor.tokenizer
    turn = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Fine"}]}]
    text = processor.apply_chat_template(turn, tokenize=False)
    tail = text[text.rfind("Fine") + 4:]
    specials = [t.content for t in tok.added_tokens_decoder.values() if t.special]
    hits = sorted((tail.find(t), t) for t in specials if t in tail)
    ids = [tok.convert_tokens_to_ids(hits[0][1])] if hits else []
    return list(dict.fromkeys(ids + ([tok.eos_token_id] if tok.eos_token_id is not None else [])))


def answer_token(processor, word: str) -> int:
    """The first token of `word` written as the assistant's answer, after the generation prompt (as
    the template writes a finished answer; a template whose finished turn does not start with its
    generation prompt, e.g. LLaVA-OneVision's "assistant \\n" vs "assistant\\n": the word right after
    the prompt, with the space the template puts before it)."""
    tok = processor.tokenizer
    user = [{"role": "user", "content": [{"type": "text", "text": "Question"}]}]
    prefix = processor.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = processor.apply_chat_template(user + [{"role": "assistant", "content": [{"type": "text", "text": word}]}],
                                         tokenize=False)
    if not full.startswith(prefix):
        k = full.rfind(word)
        full = prefix + (" " if k > 0 and full[k - 1] == " " and not prefix[-1:].isspace() else "") + word
    a, b = (tok(t, add_special_tokens=False)["input_ids"] for t in (prefix, full))
    if b[: len(a)] != a or len(b) == len(a):
        raise ValueError(f"cannot find the token of {word!r} after the chat template's generation prompt: "
                         "use eval.yes_no=generate")
    return b[len(a)]


class FamilyRunner:
    """Answers queries with a `NativeVLM` through its family's processor (a transformers processor)."""

    def __init__(self, mllm: Any, processor: Any, decoding: Decoding, *, batch_size: int = 8, seed: int = 0):
        self.mllm, self.processor, self.decoding = mllm, processor, decoding
        self.tokenizer = processor.tokenizer
        self.batch_size, self.seed = max(1, int(batch_size)), int(seed)
        self.eos_ids = end_of_turn_ids(processor)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.desc = ""

    def prompt(self, query: Query) -> str:
        messages, n_images = turn_messages(query.conversations)
        if n_images != (query.image is not None):
            raise ValueError(f"a query with image={query.image} has {n_images} <image> slots in its prompt")
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, queries: Sequence[Query]) -> dict[str, torch.Tensor]:
        """The processor's inputs for a batch of queries (all with an image, or none), left-padded."""
        texts = [self.prompt(q) for q in queries]
        images = [[q.image if isinstance(q.image, Image.Image) else load_image(Path(q.image))] for q in queries
                  if q.image is not None]
        enc = self.processor(text=texts, images=images or None, add_special_tokens=False, padding=True,
                             padding_side="left", return_tensors="pt")
        device = next(self.mllm.parameters()).device
        return {k: v.to(device) for k, v in enc.items()}

    def batches(self, queries: Sequence[Query]) -> tuple[list[int], list[list[Query]]]:
        """(order, batches): image queries and text-only ones apart, longest prompt first."""
        length = [len(self.prompt(q)) for q in queries]
        order = sorted(range(len(queries)), key=lambda i: (queries[i].image is None, -length[i]))
        out: list[list[Query]] = []
        for i in order:
            if not out or len(out[-1]) == self.batch_size or (out[-1][0].image is None) != (queries[i].image is None):
                out.append([])
            out[-1].append(queries[i])
        return order, out

    def _autocast(self) -> contextlib.AbstractContextManager:
        return eval_autocast(self.mllm, next(self.mllm.vision.parameters()).dtype)

    def _bar(self, batches: list):
        return eval_bar(batches, self.desc)

    @torch.no_grad()
    def generate_ids(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """New token ids (B, <= max_new_tokens) for the processor's inputs `enc`."""
        d, enc = self.decoding, dict(enc)
        ids, mask = enc.pop("input_ids"), enc.pop("attention_mask")
        with self._autocast():
            return self.mllm.generate(ids, mask, enc or None, max_new_tokens=d.max_new_tokens, eos_token_id=self.eos_ids,
                                      pad_token_id=self.pad_id, do_sample=d.do_sample, temperature=d.temperature,
                                      top_k=d.top_k)

    def _generate(self, queries: Sequence[Query]) -> list[str]:
        if not queries:
            return []
        if self.decoding.do_sample:
            torch.manual_seed(self.seed)
        order, batches = self.batches(queries)
        out: list[str] = []
        for batch in self._bar(batches):
            new = self.generate_ids(self.encode(batch))
            out += [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return unsort(order, out)

    @torch.no_grad()
    def _answer_yes_no(self, queries: Sequence[Query]) -> list[str]:
        if not queries:
            return []
        yes, no = answer_token(self.processor, "Yes"), answer_token(self.processor, "No")
        if yes == no:
            raise ValueError("'Yes' and 'No' start with the same token: use eval.yes_no=generate")
        order, batches = self.batches(queries)
        out: list[str] = []
        for batch in self._bar(batches):
            enc = self.encode(batch)
            ids, mask = enc.pop("input_ids"), enc.pop("attention_mask")
            with self._autocast():
                logits = self.mllm(ids, mask, None, enc or None).logits[:, -1].float()  # left-padded: last = prompt's end
            out += ["Yes" if y > n or (y == n and yes < no) else "No" for y, n in logits[:, [yes, no]].tolist()]
        return unsort(order, out)

    def generate(self, queries: Sequence[Query]) -> list[str]:
        return data_parallel(self._generate, queries)

    def answer_yes_no(self, queries: Sequence[Query]) -> list[str]:
        return data_parallel(self._answer_yes_no, queries)
