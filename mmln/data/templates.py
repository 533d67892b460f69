"""Conversation templates, prompt rendering and tokenization with label masks (LLaVA v1).

Mirrors `llava/conversation.py` (`plain`, `vicuna_v1`, `llava_llama_2`, `v0`) and the
`preprocess_*` / `tokenizer_image_token` functions of `llava/train/train.py`:

- the image placeholder is ONE id, `IMAGE_TOKEN_INDEX = -200`, put between separately tokenized
  text chunks (every chunk's own BOS dropped but the first one's);
- for chat templates the `<image>` of a human turn moves to its front: `"<image>\\n" + rest`;
- `plain` drops the instruction: BOS, image slot, caption, "\\n" (no EOS);
- supervised = every assistant answer plus its end-of-turn text (`</s>` for `vicuna_v1`,
  `" </s>"` for `llava_llama_2`, `"\\n"` for `plain`); everything else is `IGNORE_INDEX`.

Labels do NOT come from LLaVA's length arithmetic (which is off by one per extra round with
non-legacy LLaMA tokenizers and then silently zeroes the sample). A conversation is rendered as
segments (prompt text / answer text); each segment boundary is tokenized as a prefix of the
full prompt, so every segment is tokenized in exactly the left context the full string gives
it, whatever the tokenizer does after special tokens. The concatenated segments must equal the
full-string tokenization; when they do not, `ConversationError("mask_mismatch")` is raised, to
be counted and reported, never silently zeroed.

`chat_template` renders with the tokenizer's own Jinja template (`apply_chat_template`, any
Hugging Face chat model): `chat_segments` finds each answer's span in the rendered text by
rendering growing prefixes of the conversation (see there), and its end-of-turn token is the
template's own (`chat_end_of_turn`), used by generation and the yes/no-from-logits scoring.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from mmln.base.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mmln.data.token_ids import (  # noqa: F401  (re-exported: the tokenization layer below the templates)
    DEFAULT_IMAGE_TOKEN, ConversationError, sentencepiece_spaces, special_tokens, tokenize_segments,
    tokenizer_image_token,
)
HUMAN, GPT = "human", "gpt"


@dataclass(frozen=True)
class Template:
    """One of LLaVA's `Conversation` objects, reduced to what rendering needs."""

    name: str
    style: str  # plain | two (vicuna_v1) | llama_2 | single (v0)
    system: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = ""
    sep2: str = ""
    examples: tuple[tuple[str, str], ...] = ()  # few-shot (human, gpt) turns rendered before the conversation
    stop: tuple[str, ...] = ()  # strings at which generation stops


_V0_EXAMPLE_A = (
    "Renewable energy sources are those that can be replenished naturally in a relatively "
    "short amount of time, such as solar, wind, hydro, geothermal, and biomass. "
    "Non-renewable energy sources, on the other hand, are finite and will eventually be "
    "depleted, such as coal, oil, and natural gas. Here are some key differences between "
    "renewable and non-renewable energy sources:\n"
    "1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable "
    "energy sources are finite and will eventually run out.\n"
    "2. Environmental impact: Renewable energy sources have a much lower environmental impact "
    "than non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, "
    "and other negative effects.\n"
    "3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically "
    "have lower operational costs than non-renewable sources.\n"
    "4. Reliability: Renewable energy sources are often more reliable and can be used in more remote "
    "locations than non-renewable sources.\n"
    "5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different "
    "situations and needs, while non-renewable sources are more rigid and inflexible.\n"
    "6. Sustainability: Renewable energy sources are more sustainable over the long term, while "
    "non-renewable sources are not, and their depletion can lead to economic and social instability.\n"
)

TEMPLATES: dict[str, Template] = {
    # conv_llava_plain: system "", sep "\n", the human text is replaced by the image alone.
    "plain": Template("plain", "plain", sep="\n", stop=("\n",)),
    # conv_vicuna_v1 (SeparatorStyle.TWO)
    "vicuna_v1": Template(
        "vicuna_v1",
        "two",
        system="A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        roles=("USER", "ASSISTANT"),
        sep=" ",
        sep2="</s>",
        stop=("</s>",),
    ),
    # conv_llava_llama_2 (SeparatorStyle.LLAMA_2)
    "llava_llama_2": Template(
        "llava_llama_2",
        "llama_2",
        system="You are a helpful language and vision assistant. "
        "You are able to understand the visual content that the user provides, "
        "and assist the user with a variety of tasks using natural language.",
        sep="<s>",
        sep2="</s>",
        stop=("</s>",),
    ),
    # the tokenizer's own Jinja chat template (any Hugging Face chat model); see `chat_segments`
    "chat_template": Template("chat_template", "chat"),
    # conv_vicuna_v0 (SeparatorStyle.SINGLE, with its one few-shot exchange); the paper's harness.
    "v0": Template(
        "v0",
        "single",
        system="A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions.",
        roles=("Human", "Assistant"),
        sep="###",
        examples=(
            ("What are the key differences between renewable and non-renewable energy sources?", _V0_EXAMPLE_A),
        ),
        stop=("###",),
    ),
}


def get_template(template: str | Template) -> Template:
    if isinstance(template, Template):
        return template
    try:
        return TEMPLATES[template]
    except KeyError:
        raise ValueError(f"unknown template {template!r}; one of {', '.join(TEMPLATES)}") from None


# ------------------------------------------------------------------------------------ turns
def normalize_turns(conversations: Any, template: str | Template, *, training: bool,
                    image: bool = True) -> list[tuple[str, str]]:
    """LLaVA records -> [(human|gpt, text)], with the `<image>` moved to the front of its turn.

    Mirrors `preprocess_multimodal` (image first, `"<image>\\n" + rest.strip()`) and the
    "drop a leading non-human turn" rule of `preprocess`. `training=True` also enforces what a
    training sample needs: alternating turns, at least one gpt answer, exactly one `<image>`
    and it in a human turn (`image=False`, a text-only record as LLaVA-1.5's ShareGPT ones: no
    `<image>` at all); `plain` needs exactly one human and one gpt turn, and an image.
    """
    t = get_template(template)
    if not isinstance(conversations, list) or not conversations:
        raise ConversationError("malformed", "'conversations' is not a non-empty list")
    turns: list[tuple[str, str]] = []
    for k, turn in enumerate(conversations):
        if not isinstance(turn, dict) or turn.get("from") not in (HUMAN, GPT) or not isinstance(turn.get("value"), str):
            raise ConversationError("malformed", f"turn {k} is not {{'from': 'human'|'gpt', 'value': str}}")
        turns.append((turn["from"], turn["value"]))
    if turns[0][0] != HUMAN:
        turns = turns[1:]
    n_images = sum(v.count(DEFAULT_IMAGE_TOKEN) for _, v in turns)
    if training:
        if not any(r == GPT for r, _ in turns):
            raise ConversationError("no_assistant", "no 'gpt' turn")
        for k, (r, _) in enumerate(turns):
            if r != (HUMAN, GPT)[k % 2]:
                raise ConversationError("malformed", f"turn {k} is '{r}': turns must alternate human, gpt")
        if any(r == GPT and not v.strip() for r, v in turns):
            raise ConversationError("malformed", "empty 'gpt' turn")
        if not image:
            if n_images:
                raise ConversationError("malformed", f"{DEFAULT_IMAGE_TOKEN} in a record without an 'image'")
            if t.style == "plain":
                raise ConversationError("malformed", "template 'plain' (stage 1) needs an image; the record has none")
        elif n_images == 0:
            raise ConversationError("missing_image_token", f"no {DEFAULT_IMAGE_TOKEN} in the conversation")
        if n_images > 1:
            raise ConversationError("repeated_image_token", f"{DEFAULT_IMAGE_TOKEN} occurs {n_images} times")
        if any(r == GPT and DEFAULT_IMAGE_TOKEN in v for r, v in turns):
            raise ConversationError("malformed", f"{DEFAULT_IMAGE_TOKEN} in a 'gpt' turn")
        if t.style == "plain" and len(turns) != 2:
            raise ConversationError("malformed", f"template 'plain' needs 1 human + 1 gpt turn, got {len(turns)} turns")
    out = []
    for r, v in turns:
        if r == HUMAN and DEFAULT_IMAGE_TOKEN in v:  # LLaVA strips the result too: an image-only turn is "<image>"
            v = DEFAULT_IMAGE_TOKEN if t.style == "plain" else (
                DEFAULT_IMAGE_TOKEN + "\n" + v.replace(DEFAULT_IMAGE_TOKEN, "").strip()).strip()
        out.append((r, v))
    return out


# ---------------------------------------------------------------------------------- render
def render_segments(
    template: str | Template, turns: Sequence[tuple[str, str]], *, add_generation_prompt: bool = False
) -> list[tuple[str, bool]]:
    """The prompt as [(text, supervised)] segments; `"".join(texts)` is LLaVA's `get_prompt()`.

    Answers are segments of their own that include their end-of-turn text and the separator
    space before them (which the tokenizer merges into the answer's first token, "▁The").
    With `add_generation_prompt`, a conversation ending in a human turn gets the assistant
    header, ready for generation (LLaVA: an empty last message).
    """
    t = get_template(template)
    segs: list[tuple[str, bool]] = []
    if t.style == "plain":  # preprocess_plain: "<image>" + caption + "\n"
        for r, v in turns:
            if r == HUMAN:
                segs.append((DEFAULT_IMAGE_TOKEN if DEFAULT_IMAGE_TOKEN in v else "", False))
            else:
                segs.append((v + t.sep, True))
    elif t.style in ("two", "single"):
        end = t.sep2 if t.style == "two" else t.sep
        segs.append((t.system + t.sep, False))
        for q, a in t.examples:
            segs.append((f"{t.roles[0]}: {q}{t.sep}{t.roles[1]}: {a}{end}", False))
        for r, v in turns:
            if r == HUMAN:
                segs.append((f"{t.roles[0]}: {v}{t.sep}", False))
            else:
                segs += [(f"{t.roles[1]}:", False), (f" {v}{end}", True)]
    elif t.style == "llama_2":
        for k, (r, v) in enumerate(turns):
            if r == HUMAN:
                if k == 0 and t.system:
                    v = f"<<SYS>>\n{t.system}\n<</SYS>>\n\n{v}"
                segs.append((("" if k == 0 else t.sep) + f"[INST] {v} [/INST]", False))
            else:
                segs.append((f" {v} {t.sep2}", True))
    else:
        raise ValueError(f"unknown template style {t.style!r}")
    if add_generation_prompt and turns and turns[-1][0] == HUMAN and t.style in ("two", "single"):
        segs.append((f"{t.roles[1]}:", False))
    merged: list[tuple[str, bool]] = []  # join neighbours with the same flag; drop empty text
    for text, sup in segs:
        if merged and merged[-1][1] == sup:
            merged[-1] = (merged[-1][0] + text, sup)
        elif text:
            merged.append((text, sup))
    return merged


def render_prompt(
    template: str | Template, conversations: list[dict[str, str]], add_generation_prompt: bool = True,
    tokenizer: Any = None,
) -> str:
    """The prompt text of a conversation (LLaVA's `conv.get_prompt()`); for evaluation the last
    turn is the human question and the assistant header is appended. `chat_template` needs the
    tokenizer (its template renders the text)."""
    turns = normalize_turns(conversations, template, training=False)
    if get_template(template).style == "chat":
        return render_chat(tokenizer, turns, add_generation_prompt=add_generation_prompt)
    return "".join(s for s, _ in render_segments(template, turns, add_generation_prompt=add_generation_prompt))


# ----------------------------------------------------------------------- tokenizer templates
CHAT_ROLES = {HUMAN: "user", GPT: "assistant"}


def missing_chat_template(template: str | Template, tokenizer: Any) -> Optional[str]:
    """The one-line error when `template` renders with the tokenizer's own chat template and the
    tokenizer has none (checked by `python -m mmln.fit` before anything trains); else None."""
    if get_template(template).style != "chat" or getattr(tokenizer, "chat_template", None):
        return None
    return (f"data.template=chat_template: the tokenizer at '{getattr(tokenizer, 'name_or_path', '?')}' has no chat "
            "template (no chat_template in its tokenizer_config.json, no chat_template.jinja): set "
            "model.llm.tokenizer to a chat model's tokenizer, or data.template to plain, vicuna_v1 or llava_llama_2")


def render_chat(tokenizer: Any, turns: Sequence[tuple[str, str]], *, add_generation_prompt: bool = False) -> str:
    """`turns` rendered by the tokenizer's Jinja chat template (roles user / assistant).

    A tokenizer without a template is a configuration error (ValueError); a conversation the
    template refuses (e.g. Mistral's "roles must alternate") is `ConversationError("template_error")`.
    """
    problem = missing_chat_template("chat_template", tokenizer)
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


# -------------------------------------------------------------------------------- tokenize
def encode_prompt(template: str | Template, conversations: list[dict[str, str]], tokenizer: Any) -> list[int]:
    """Input ids of an evaluation prompt whose last assistant turn is to be generated."""
    prompt = render_prompt(template, conversations, add_generation_prompt=True, tokenizer=tokenizer)
    return tokenizer_image_token(prompt, tokenizer, add_special_tokens=get_template(template).style != "chat")


def tokenize_conversation(
    template: str | Template, conversations: Any, tokenizer: Any, image: bool = True
) -> tuple[list[int], list[int]]:
    """A training record's conversation -> (input_ids, labels), LLaVA v1's `preprocess(...)`
    without its legacy-tokenizer dependency; `image=False` for a text-only record (no image
    slot). Raises `ConversationError` with a reason."""
    turns = normalize_turns(conversations, template, training=True, image=image)
    if get_template(template).style == "chat":
        ids, labels = tokenize_segments(chat_segments(tokenizer, turns), tokenizer, add_special_tokens=False)
    else:
        ids, labels = tokenize_segments(render_segments(template, turns), tokenizer)
    if ids.count(IMAGE_TOKEN_INDEX) != int(image):
        raise ConversationError("mask_mismatch", f"{ids.count(IMAGE_TOKEN_INDEX)} image slots in the ids")
    return ids, labels


# ---------------------------------------------------------------------------------- stops
def stop_strings(template: str | Template) -> list[str]:
    """Strings at which generation stops (LLaVA: `sep2` for TWO, else `sep`; EOS for LLaMA-2)."""
    return list(get_template(template).stop)


def stop_token_ids(template: str | Template, tokenizer: Any) -> list[int]:
    """EOS plus every stop string that is a single token after text (e.g. "\\n" -> <0x0A>).
    Multi-token stop strings (v0's "###") need `stop_strings` in `generate`."""
    out = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if get_template(template).style == "chat":
        eot = chat_end_of_turn(tokenizer)
        eot_id = tokenizer.convert_tokens_to_ids(eot) if eot is not None else None
        return out + ([eot_id] if eot_id is not None and eot_id not in out else [])
    anchor = tokenizer("a", add_special_tokens=False)["input_ids"]
    for s in stop_strings(template):
        ids = tokenizer("a" + s, add_special_tokens=False)["input_ids"]
        if ids[: len(anchor)] == anchor and len(ids) == len(anchor) + 1 and ids[-1] not in out:
            out.append(ids[-1])
    return out
