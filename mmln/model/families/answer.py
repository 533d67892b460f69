"""Answers from a native family model (`mmln.load(...).ask(...)`): the questions go through the
family's own processor and chat template (generation prompt on), the family's own `generate`
decodes (greedy, `eval.max_new_tokens`) and stops at the template's end-of-turn token; batched
(`eval.batch_size`) by `mmln.eval.family_runner.FamilyRunner`, as `mmln.evaluate` answers."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

from mmln.eval.family_runner import end_of_turn_ids  # noqa: F401  (the template's stop tokens, for callers)


def family_runner(cfg: Any, mllm: Any, max_new_tokens: Optional[int] = None):
    """A `FamilyRunner` for `mllm` (frozen, eval mode, on the first GPU when there is one) with the
    processor of `cfg.model.init_from` and the decoding of `cfg.eval.profile`."""
    import dataclasses

    import torch
    from transformers import AutoProcessor

    from mmln.eval.family_runner import FamilyRunner
    from mmln.eval.runner import decoding_for

    mllm.requires_grad_(False).eval().to("cuda" if torch.cuda.is_available() else "cpu")
    decoding = decoding_for(cfg)
    if max_new_tokens:
        decoding = dataclasses.replace(decoding, max_new_tokens=int(max_new_tokens))
    return FamilyRunner(mllm, AutoProcessor.from_pretrained(cfg.model.init_from), decoding,
                        batch_size=cfg.eval.batch_size, seed=cfg.eval.seed)


class FamilyAnswerer:
    """`ask(image, question)` for a `NativeVLM` built from `cfg` (same contract as `mmln.api.Model.ask`)."""

    def __init__(self, cfg: Any, mllm: Any, max_new_tokens: Optional[int] = None):
        self.cfg, self.mllm = cfg, mllm
        self.runner = family_runner(cfg, mllm, max_new_tokens)
        self.processor = self.runner.processor

    def ask(self, image: Union[Any, Sequence[Any], None], question: Union[str, Sequence[str]]):
        from PIL import Image

        from mmln.data.images import pair_questions
        from mmln.eval.runner import Query, human

        single, images, questions = pair_questions(image, question)
        queries = [Query([human(("<image>\n" if im is not None else "") + q)],
                         im if im is None or isinstance(im, Image.Image) else Path(im))
                   for im, q in zip(images, questions)]
        answers = self.runner.generate(queries)
        return answers[0] if single else answers
