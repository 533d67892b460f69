"""Answers from a native family model (`mmln.load(...).ask(...)`): the question goes through the
family's own processor and chat template (generation prompt on), the family's own `generate`
decodes greedily and stops at the template's end-of-turn token. One query at a time (no batching
yet: a batch would need the processor's left padding of mixed image / text-only prompts)."""
from __future__ import annotations

import contextlib
from typing import Any, Optional, Sequence, Union


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


class FamilyAnswerer:
    """`ask(image, question)` for a `NativeVLM` built from `cfg` (same contract as `mmln.api.Model.ask`)."""

    def __init__(self, cfg: Any, mllm: Any, max_new_tokens: Optional[int] = None):
        import torch
        from transformers import AutoProcessor

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cfg, self.mllm = cfg, mllm.requires_grad_(False).eval().to(self.device)
        self.processor = AutoProcessor.from_pretrained(cfg.model.init_from)
        self.eos = end_of_turn_ids(self.processor)
        self.max_new_tokens = max_new_tokens or int(cfg.eval.max_new_tokens)

    def inputs(self, image, question: str) -> dict:
        from PIL import Image

        content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": question}]
        text = self.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)
        images = None
        if image is not None:
            images = [[image if isinstance(image, Image.Image) else Image.open(image).convert("RGB")]]
        enc = self.processor(text=[text], images=images, add_special_tokens=False, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    def answer(self, image, question: str) -> str:
        import torch

        enc = self.inputs(image, question)
        ids, mask = enc.pop("input_ids"), enc.pop("attention_mask")
        tok = self.processor.tokenizer
        bf16 = self.device.type == "cuda" and next(self.mllm.vision.parameters()).dtype == torch.bfloat16
        # bf16 frozen weights with fp32 tuned tensors (norms keep their small updates): autocast, as mmln.eval does
        with torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            out = self.mllm.generate(ids, mask, enc or None, max_new_tokens=self.max_new_tokens, eos_token_id=self.eos,
                                     pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0)
        return tok.decode(out[0], skip_special_tokens=True).strip()

    def ask(self, image: Union[Any, Sequence[Any], None], question: Union[str, Sequence[str]]):
        from mmln.data.images import pair_questions

        single, images, questions = pair_questions(image, question)
        answers = [self.answer(im, q) for im, q in zip(images, questions)]
        return answers[0] if single else answers
