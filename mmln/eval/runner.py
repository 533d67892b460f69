"""The shared inference runner: (image, conversation) queries -> answers, batched with the KV cache.

- Prompts: a query is a LLaVA-format conversation whose last turn is the human question (with
  `<image>` where the image goes; earlier turns are text-only in-context examples), rendered with
  `decoding.template` by `mmln.data.templates.encode_prompt` (image slot = one -200 id).
- Decoding (`decoding_for`): profile `official` = the model's template (`cfg.data.template`),
  greedy, `cfg.eval.max_new_tokens`; profile `paper` = the paper's harness: LLaVA `v0` template,
  sampling at temperature 0.2 with top-k 50, at most 10 new tokens.
- Stopping: EOS and every single-token stop string end a sequence inside `generate`
  (`</s>` for vicuna_v1 / llava_llama_2; for `chat_template` EOS and the template's own end-of-turn
  token, e.g. <|eot_id|> / <|im_end|>); multi-token stop strings (v0's "###") cut the decoded text.
- Batching: queries are sorted by prompt length (after image expansion, longest first so memory
  runs out on the first batch if at all), batched, and answers are returned in the input order.
- Data parallel: under `torch.distributed` (e.g. `torchrun --nproc_per_node N -m mmln.evaluate`),
  rank r answers queries r, r + N, ... and every rank gets all answers back in input order.
- Yes/no from logits (`answer_yes_no`): "Yes" when the next-token logit of the first token of
  " Yes" beats that of " No", else "No". Both logits come from the same forward pass that
  greedy decoding's first step takes, so whenever greedy's first token is the " Yes" or the
  " No" token, the two modes agree (tests/test_evaluate.py checks this on left-padded batches).

No Lightning, no MLflow: `mmln.evaluate` and the benchmark glue (`mmln.eval.benchmarks`) drive it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader

from mmln.config import ConfigError
from mmln.base.constants import IMAGE_TOKEN_INDEX
from mmln.data.chat_template import chat_answer_token
from mmln.data.dataset import pad_right
from mmln.data.images import load_image
from mmln.data.templates import encode_prompt, get_template, stop_strings, stop_token_ids


@dataclass
class Query:
    """One question: LLaVA turns (`[{"from": "human"|"gpt", "value": str}]`, last = the human
    question holding `<image>`) and the image file or a PIL image (None for a text-only query)."""

    conversations: list[dict[str, str]]
    image: Optional[Path | Image.Image] = None


@dataclass(frozen=True)
class Decoding:
    template: str
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: Optional[int] = None


PAPER_DECODING = Decoding("v0", max_new_tokens=10, do_sample=True, temperature=0.2, top_k=50)


def decoding_for(cfg: Any) -> Decoding:
    """The decoding of `cfg.eval.profile` (see the module docstring)."""
    if cfg.eval.profile == "paper":
        return PAPER_DECODING
    return Decoding(cfg.data.template, max_new_tokens=int(cfg.eval.max_new_tokens))


def human(text: str) -> dict[str, str]:
    return {"from": "human", "value": text}


def gpt(text: str) -> dict[str, str]:
    return {"from": "gpt", "value": text}


def with_examples(examples: Sequence[tuple[str, str]], question: str) -> list[dict[str, str]]:
    """Text-only in-context (question, answer) turns, then the image question."""
    turns = [t for q, a in examples for t in (human(q), gpt(a))]
    return turns + [human("<image>\n" + question)]


class Runner:
    """Answers queries with one MLLM. `image_processor`: PIL image -> (3, S, S) tensor."""

    def __init__(self, mllm: Any, tokenizer: Any, image_processor: Callable, decoding: Decoding, *,
                 batch_size: int = 8, num_workers: int = 0, seed: int = 0):
        self.mllm = mllm
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.decoding = decoding
        self.batch_size = max(1, int(batch_size))
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.template = get_template(decoding.template)
        self.eos_ids = stop_token_ids(self.template, tokenizer)
        self.cut_at = [s for s in stop_strings(self.template) if s not in tokenizer.all_special_tokens]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.num_image_tokens = mllm.vision.num_patches
        self.desc = ""  # names the progress bar of each call (e.g. the benchmark); "" = no bar

    # prompts --------------------------------------------------------------------------------
    def encode(self, query: Query) -> list[int]:
        ids = encode_prompt(self.template, query.conversations, self.tokenizer)
        n_images = ids.count(IMAGE_TOKEN_INDEX)
        if n_images != (query.image is not None):
            raise ValueError(f"a query with image={query.image} has {n_images} <image> slots in its prompt")
        length = len(ids) + n_images * (self.num_image_tokens - 1)
        if length > self.mllm.max_length:
            raise ConfigError(f"a prompt of {length} tokens (after image expansion) exceeds model.max_length="
                              f"{self.mllm.max_length}: raise model.max_length or shorten the prompt")
        return ids

    def _loader(self, queries: Sequence[Query]) -> tuple[list[int], DataLoader]:
        """Queries sorted by prompt length (longest first) in batches; returns (order, loader)."""
        encoded = [self.encode(q) for q in queries]
        order = sorted(range(len(queries)), key=lambda i: -len(encoded[i]))
        items = [(encoded[i], queries[i].image) for i in order]
        loader = DataLoader(items, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                            collate_fn=Collate(self.pad_id, self.image_processor))
        return order, loader

    def _autocast(self) -> contextlib.AbstractContextManager:
        return eval_autocast(self.mllm, self.mllm.vision.dtype)

    def _bar(self, loader: DataLoader):
        return eval_bar(loader, self.desc)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        device = next(self.mllm.parameters()).device
        return {k: (v.to(device) if v is not None else None) for k, v in batch.items()}

    # answers --------------------------------------------------------------------------------
    def clean(self, text: str) -> str:
        """Cut the decoded text at the first multi-token stop string (v0: "###"), strip."""
        for s in self.cut_at:
            text = text.split(s, 1)[0]
        return text.strip()

    def generate(self, queries: Sequence[Query]) -> list[str]:
        """Decoded answers in the order of `queries` (KV cache, batched, stop at end-of-turn)."""
        return data_parallel(self._generate, queries)

    def answer_yes_no(self, queries: Sequence[Query]) -> list[str]:
        """"Yes" or "No" per query from the next-token logits of the two answers' first tokens."""
        return data_parallel(self._answer_yes_no, queries)

    @torch.no_grad()
    def _generate(self, queries: Sequence[Query]) -> list[str]:
        if not queries:
            return []
        d = self.decoding
        order, loader = self._loader(queries)
        out: list[str] = []
        if d.do_sample:
            torch.manual_seed(self.seed)  # sampling (paper profile) is reproducible for a given batching
        for batch in self._bar(loader):
            with self._autocast():
                new = self.mllm.generate(**self._to_device(batch), max_new_tokens=d.max_new_tokens,
                                         eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
                                         do_sample=d.do_sample, temperature=d.temperature, top_k=d.top_k)
            out += [self.clean(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return unsort(order, out)

    def yes_no_token_ids(self) -> tuple[int, int]:
        """Ids of the first token of " Yes" and of " No" as they follow the prompt's last text
        (chat templates: of "Yes" and "No" as answers right after the template's generation prompt)."""
        if self.template.style == "chat":
            ids = [chat_answer_token(self.tokenizer, word) for word in ("Yes", "No")]
            if ids[0] == ids[1]:
                raise ValueError("'Yes' and 'No' start with the same token: use eval.yes_no=generate")
            return ids[0], ids[1]
        anchor = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        ids = []
        for word in ("Yes", "No"):
            toks = self.tokenizer("a " + word, add_special_tokens=False)["input_ids"]
            if toks[: len(anchor)] != anchor or len(toks) == len(anchor):
                raise ValueError(f"cannot find the token of {word!r} after text with this tokenizer")
            ids.append(toks[len(anchor)])
        if ids[0] == ids[1]:
            raise ValueError("' Yes' and ' No' start with the same token: use eval.yes_no=generate")
        return ids[0], ids[1]

    @torch.no_grad()
    def _answer_yes_no(self, queries: Sequence[Query]) -> list[str]:
        if not queries:
            return []
        yes, no = self.yes_no_token_ids()
        order, loader = self._loader(queries)
        out: list[str] = []
        for batch in self._bar(loader):
            with self._autocast():
                logits = self.mllm.next_token_logits(**self._to_device(batch)).float()
            # a tie goes where argmax (greedy) sends it: to the lower token id
            out += ["Yes" if y > n or (y == n and yes < no) else "No" for y, n in logits[:, [yes, no]].tolist()]
        return unsort(order, out)


def data_parallel(answer: Callable[[Sequence[Query]], list[str]], queries: Sequence[Query]) -> list[str]:
    """`answer(queries)` on one process; under torch.distributed each rank answers every N-th query
    and the answers are all-gathered back into input order."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return answer(queries)
    rank, world = dist.get_rank(), dist.get_world_size()
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, answer(list(queries)[rank::world]))
    out: list[str] = [""] * len(queries)
    for r, part in enumerate(parts):
        out[r::world] = part
    return out


class Collate:
    """Right-padded ids + attention mask (`MLLM.generate` re-pads on the left) + pixel values;
    images are loaded here, i.e. in the loader's workers."""

    def __init__(self, pad_id: int, image_processor: Callable):
        self.pad_id = pad_id
        self.image_processor = image_processor

    def __call__(self, batch: list[tuple[list[int], Optional[Path]]]) -> dict[str, Any]:
        input_ids, mask, _ = pad_right([ids for ids, _ in batch], self.pad_id)
        proc = self.image_processor  # a path is checked against its cost limits before decoding
        images = [proc(p if isinstance(p, Image.Image) else load_image(p, getattr(proc, "limits", None),
                                                                        getattr(proc, "pad", False)))
                  for _, p in batch if p is not None]
        return {"input_ids": input_ids, "attention_mask": mask,
                "pixel_values": torch.stack(images) if images else None}


def unsort(order: list[int], values: list[Any]) -> list[Any]:
    out: list[Any] = [None] * len(values)
    for i, v in zip(order, values, strict=True):
        out[i] = v
    return out


def eval_autocast(mllm, vision_dtype) -> contextlib.AbstractContextManager:
    """bf16 frozen weights with fp32 tuned tensors (norms keep their small updates): autocast on CUDA
    when the vision tower is bf16; nothing otherwise. Shared by both runners."""
    if next(mllm.parameters()).device.type == "cuda" and vision_dtype == torch.bfloat16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def eval_bar(batches, desc: str):
    """`batches` with a progress bar (rate, ETA) named `desc`, on rank 0 only; the bare batches otherwise."""
    if not desc or (dist.is_available() and dist.is_initialized() and dist.get_rank() > 0):
        return batches
    from mmln.base.progress import bar

    return bar(batches, total=len(batches), desc=desc, unit="batch")
