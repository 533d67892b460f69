"""Conversations rendered by the tokenizer's own Jinja chat template (`data.template=chat_template`,
any Hugging Face chat model), and where each answer's supervised text lies in that rendering.

`chat_segments` finds each answer's span in the rendered text by rendering growing prefixes of
the conversation (see `chat_pieces`); the end-of-turn token is the template's own
(`chat_end_of_turn`), used by generation and the yes/no-from-logits scoring. The LLaVA templates
(`plain`, `vicuna_v1`, ...) and the tokenization with label masks are `mmln.data.templates`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from mmln.base.constants import IGNORE_INDEX
from mmln.data.token_ids import ConversationError, special_tokens, tokenize_segments

HUMAN, GPT = "human", "gpt"  # the roles of a LLaVA record's turns


CHAT_ROLES = {HUMAN: "user", GPT: "assistant"}


def no_chat_template(tokenizer: Any) -> Optional[str]:
    """The one-line error when the tokenizer has no chat template of its own; else None."""
    if getattr(tokenizer, "chat_template", None):
        return None
    return (f"data.template=chat_template: the tokenizer at '{getattr(tokenizer, 'name_or_path', '?')}' has no chat "
            "template (no chat_template in its tokenizer_config.json, no chat_template.jinja): set "
            "model.llm.tokenizer to a chat model's tokenizer, or data.template to plain, vicuna_v1 or llava_llama_2")


def render_chat(tokenizer: Any, turns: Sequence[tuple[str, str]], *, add_generation_prompt: bool = False) -> str:
    """`turns` rendered by the tokenizer's Jinja chat template (roles user / assistant).

    A tokenizer without a template is a configuration error (ValueError); a conversation the
    template refuses (e.g. Mistral's "roles must alternate") is `ConversationError("template_error")`.
    """
    problem = no_chat_template(tokenizer)
    if problem:
        raise ValueError(problem)
    messages = [{"role": CHAT_ROLES[r], "content": v} for r, v in turns]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja2 TemplateError / the template's raise_exception
        raise ConversationError("template_error", f"the chat template cannot render the conversation: {e}") from None


def _answer_span(span: str, content: str, specials: Sequence[str]) -> tuple[int, int, int]:
    """(start, text_end, end) in `span`, the text an assistant turn adds after the generation
    prompt: the answer's text runs from `start` (the whitespace just before it, which tokenizers
    merge into its first token) to `text_end`, its end-of-turn through `end` (the last special
    token after it; ChatML's trailing newline stays prompt). `span[:start]` is what the template
    writes before the text (Qwen3's empty `<think>` block); it is supervised too."""
    content = content.strip()
    at = span.find(content) if content else -1
    if at < 0:
        raise ConversationError("mask_mismatch", "an assistant turn's text does not occur in its rendering")
    start, text_end = at, at + len(content)
    while start > 0 and span[start - 1] in " \t":
        start -= 1
    tail, last = span[text_end:], 0
    for tok in specials:
        k = tail.rfind(tok)
        if k >= 0:
            last = max(last, k + len(tok))
    return start, text_end, text_end + (last if last else len(tail))


@dataclass(frozen=True)
class _Turn:
    """Where an assistant turn's supervised text ended: `head` (the rendering of the turns before
    it, with the generation prompt), its `content` and its end-of-turn text `eot`, and the whole
    rendering up to that end as the turn was rendered last (`last`)."""

    head: str
    content: str
    eot: str
    last: str


def _resume(text: str, prev: Optional[_Turn], k: int) -> int:
    """Where, in `text` (the rendering of a longer conversation), the turn `prev` ended.

    Templates that render a turn the same once later turns follow: at `len(prev.last)`. Templates
    that render it differently in history (Qwen3 drops its `<think>` block, others rewrite past
    answers): after `prev.head`, at the end of the turn's text (else of its rewritten form), then
    its end-of-turn text. A template that changes even the text before the turn is a mask_mismatch."""
    if prev is None:
        return 0
    if text.startswith(prev.last):
        return len(prev.last)
    if text.startswith(prev.head):
        at = text.find(prev.content, len(prev.head))
        at = len(prev.head) if at < 0 else at + len(prev.content)
        end = text.find(prev.eot, at) if prev.eot else (at if at > len(prev.head) else -1)
        if end >= 0:
            return end + len(prev.eot)
    raise ConversationError("mask_mismatch", f"the chat template renders the turns before turn {k + 1} differently "
                                             "once later turns follow, and where its turns end cannot be found")


def chat_pieces(
    tokenizer: Any, turns: Sequence[tuple[str, str]], *, add_generation_prompt: bool = False
) -> list[tuple[str, str]]:
    """[(text, kind)] of a conversation rendered by the tokenizer's chat template; kind is
    `prompt`, `lead` (what the template writes after the generation prompt before the answer's
    text, e.g. Qwen3's `<think>\\n\\n</think>\\n\\n`) or `answer` (the text through its end-of-turn).

    Every assistant turn is rendered as the template renders it when it is the LAST turn, which is
    what the model generates after the generation prompt: turn k's text is what the rendering of
    turns[:k+1] adds to the rendering of turns[:k] with the generation prompt (which must be a
    prefix of it). The text between two assistant turns (the user turns and the next generation
    prompt) comes from the rendering of the longer conversation, cut where the earlier turn ends
    (`_resume`), so templates that render past turns differently (Qwen3, templates that drop past
    reasoning or rewrite answers) lose neither a turn nor the conversation. Only a template that
    changes the text BEFORE a past turn makes it a `ConversationError("mask_mismatch")`.
    """
    specials = special_tokens(tokenizer)
    pieces: list[tuple[str, str]] = []
    prev: Optional[_Turn] = None
    for k, (role, value) in enumerate(turns):
        if role != GPT:
            continue
        head = render_chat(tokenizer, turns[:k], add_generation_prompt=True) if k else ""
        after = render_chat(tokenizer, turns[: k + 1])
        if not after.startswith(head):
            raise ConversationError("mask_mismatch", f"the chat template's generation prompt is not how turn {k + 1} "
                                                     "begins when it is the last turn")
        span = after[len(head):]
        start, text_end, end = _answer_span(span, value, specials)
        pieces += [(head[_resume(head, prev, k):], "prompt"), (span[:start], "lead"), (span[start:end], "answer")]
        prev = _Turn(head, value.strip(), span[text_end:end], after[: len(head) + end])
    full = render_chat(tokenizer, turns, add_generation_prompt=add_generation_prompt)
    pieces.append((full[_resume(full, prev, len(turns)):], "prompt"))
    return [(t, kind) for t, kind in pieces if t]


def chat_segments(
    tokenizer: Any, turns: Sequence[tuple[str, str]], *, add_generation_prompt: bool = False
) -> list[tuple[str, bool]]:
    """[(text, supervised)] of `chat_pieces`: the lead and the answer are supervised."""
    return [(t, kind != "prompt") for t, kind in chat_pieces(tokenizer, turns, add_generation_prompt=add_generation_prompt)]


def chat_answer_token(tokenizer: Any, word: str) -> int:
    """The first token of `word` as an answer in the chat template's context (after its
    generation prompt and any lead the template writes there, e.g. "Yes" right after
    "assistant\\n"), for yes/no-from-logits."""
    pieces = chat_pieces(tokenizer, [(HUMAN, "Question"), (GPT, word)])
    ids, labels = tokenize_segments([(t, kind == "answer") for t, kind in pieces], tokenizer, add_special_tokens=False)
    return next(label for label in labels if label != IGNORE_INDEX)


def chat_end_of_turn(tokenizer: Any) -> Optional[str]:
    """The template's own end-of-turn token: the first special token after an answer's text
    (<|eot_id|> for Llama-3, <|im_end|> for ChatML, </s> for Mistral); None when there is none."""
    turns = [(HUMAN, "Hi"), (GPT, "Fine")]
    span = render_chat(tokenizer, turns)[len(render_chat(tokenizer, turns[:1], add_generation_prompt=True)):]
    tail = span[span.find("Fine") + 4 :] if "Fine" in span else ""
    hits = [(tail.find(t), t) for t in special_tokens(tokenizer) if t in tail]
    return min(hits)[1] if hits else None
