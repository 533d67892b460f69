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
Hugging Face chat model): `mmln.data.chat_template`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from mmln.base.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX  # noqa: F401  (IGNORE_INDEX: re-exported)
from mmln.data.token_ids import (  # noqa: F401  (re-exported: the tokenization layer below the templates)
    DEFAULT_IMAGE_TOKEN, ConversationError, sentencepiece_spaces, special_tokens, tokenize_segments,
    tokenizer_image_token,
)
from mmln.data.chat_template import (  # noqa: F401  (re-exported: the chat-template rendering below the templates)
    CHAT_ROLES, GPT, HUMAN, chat_answer_token, chat_end_of_turn, chat_pieces, chat_segments, no_chat_template,
    render_chat,
)


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
def missing_chat_template(template: str | Template, tokenizer: Any) -> Optional[str]:
    """The one-line error when `template` renders with the tokenizer's own chat template and the
    tokenizer has none (checked by `python -m mmln.fit` before anything trains); else None."""
    if get_template(template).style != "chat":
        return None
    return no_chat_template(tokenizer)


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
