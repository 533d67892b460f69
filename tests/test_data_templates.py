"""Templates and label masks with tiny LLaMA-style tokenizers in both legacy modes."""
from __future__ import annotations

import pytest
from test_data_helpers import tok_dirs, toks  # noqa: F401  (fixtures)

from mmln.data.templates import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    ConversationError,
    Template,
    encode_prompt,
    render_prompt,
    stop_strings,
    stop_token_ids,
    tokenize_conversation,
    tokenizer_image_token,
)

Q1, A1 = "What color is the circle?", "The circle is red."
Q2, A2 = "How many shapes are there?", "There are two shapes: a red circle and a blue star."
Q3, A3 = "Where is the star?", "The star is at the top left."
EOT = {"vicuna_v1": "</s>", "llava_llama_2": " </s>", "plain": "\n"}


def conv(n_turns: int, image_at_end: bool = False) -> list[dict[str, str]]:
    qa = [(Q1, A1), (Q2, A2), (Q3, A3)][:n_turns]
    out = []
    for k, (q, a) in enumerate(qa):
        if k == 0:
            q = f"{q}\n<image>" if image_at_end else f"<image>\n{q}"
        out += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return out


def supervised_runs(tok, ids, labels) -> list[str]:
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(lab)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tok.decode(r) for r in runs]


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("template,n_turns", [("plain", 1), ("vicuna_v1", 1), ("vicuna_v1", 3),
                                              ("llava_llama_2", 1), ("llava_llama_2", 3)])
def test_supervised_text_is_exactly_the_answers(toks, legacy, template, n_turns):
    tok = toks[legacy]
    c = conv(n_turns, image_at_end=n_turns == 1)
    ids, labels = tokenize_conversation(template, c, tok)
    assert len(ids) == len(labels)
    answers = [t["value"] for t in c if t["from"] == "gpt"]
    assert supervised_runs(tok, ids, labels) == [a + EOT[template] for a in answers]
    # one image slot, unsupervised; BOS first and unsupervised; ids are LLaVA's full-string ids
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and labels[ids.index(IMAGE_TOKEN_INDEX)] == IGNORE_INDEX
    assert ids[0] == tok.bos_token_id and labels[0] == IGNORE_INDEX
    assert ids == tokenizer_image_token(render_prompt(template, c, add_generation_prompt=False), tok)
    if template == "plain":  # BOS, image, caption, "\n"; no EOS
        assert ids[:2] == [tok.bos_token_id, IMAGE_TOKEN_INDEX] and tok.eos_token_id not in ids
        assert all(lab != IGNORE_INDEX for lab in labels[2:])


def _llava_v1_reference(prompt: str, tok, sep: str, sep2: str) -> tuple[list[int], bool]:
    """LLaVA's preprocess_v1 / preprocess_llama_2 length arithmetic (before the Jan-2024 fix)."""
    ids = tokenizer_image_token(prompt, tok)
    target = list(ids)
    total = sum(1 for i in ids if i != tok.pad_token_id)
    cur = 1
    target[:1] = [IGNORE_INDEX]
    for rou in prompt.split(sep2):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        round_len = len(tokenizer_image_token(rou, tok))
        instruction_len = len(tokenizer_image_token(parts[0] + sep, tok)) - 2
        target[cur:cur + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur += round_len
    target[cur:] = [IGNORE_INDEX] * (len(target) - cur)
    return target, cur == total


@pytest.mark.parametrize("template,sep,sep2", [("vicuna_v1", " ASSISTANT: ", "</s>"),
                                               ("llava_llama_2", "[/INST] ", "</s>")])
def test_legacy_labels_equal_llava_arithmetic(toks, template, sep, sep2):
    tok = toks[True]
    for n in (1, 2, 3):
        c = conv(n)
        ids, labels = tokenize_conversation(template, c, tok)
        ref, ok = _llava_v1_reference(render_prompt(template, c, add_generation_prompt=False), tok, sep, sep2)
        assert ok and labels == ref


def test_non_legacy_breaks_llava_arithmetic_but_not_ours(toks):
    """With legacy=False, text after </s> loses its dummy prefix, so LLaVA's
    per-round lengths are off by one and it would zero the sample; our masks do not care."""
    tok = toks[False]
    c = conv(3)
    prompt = render_prompt("vicuna_v1", c, add_generation_prompt=False)
    ref, ok = _llava_v1_reference(prompt, tok, " ASSISTANT: ", "</s>")
    assert not ok  # LLaVA: "WARNING: tokenization mismatch" -> whole sample ignored
    ids, labels = tokenize_conversation("vicuna_v1", c, tok)
    assert supervised_runs(tok, ids, labels) == [A1 + "</s>", A2 + "</s>", A3 + "</s>"]
    # the two modes tokenize the text after </s> differently, and both are masked right
    ids_legacy, _ = tokenize_conversation("vicuna_v1", c, toks[True])
    assert ids != ids_legacy


def test_render_prompts():
    c = [{"from": "human", "value": "What is it?\n<image>"}]
    assert render_prompt("vicuna_v1", c) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is it? ASSISTANT:"
    )
    assert render_prompt("llava_llama_2", c) == (
        "[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the visual "
        "content that the user provides, and assist the user with a variety of tasks using natural language."
        "\n<</SYS>>\n\n<image>\nWhat is it? [/INST]"
    )
    assert render_prompt("plain", c) == "<image>"
    v0 = render_prompt("v0", c)
    assert v0.startswith("A chat between a curious human and an artificial intelligence assistant. The assistant "
                         "gives helpful, detailed, and polite answers to the human's questions.###Human: What are "
                         "the key differences between renewable and non-renewable energy sources?###Assistant: "
                         "Renewable energy sources are those")
    assert v0.endswith("economic and social instability.\n###Human: <image>\nWhat is it?###Assistant:")
    two = c + [{"from": "gpt", "value": "A circle."}, {"from": "human", "value": "Color?"}]
    assert render_prompt("vicuna_v1", two).endswith(
        "USER: <image>\nWhat is it? ASSISTANT: A circle.</s>USER: Color? ASSISTANT:")
    assert render_prompt("llava_llama_2", two).endswith("What is it? [/INST] A circle. </s><s>[INST] Color? [/INST]")


@pytest.mark.parametrize("legacy", [True, False])
def test_encode_prompt_and_stops(toks, legacy):
    tok = toks[legacy]
    c = [{"from": "human", "value": "<image>\nWhat is it?"}]
    ids = encode_prompt("vicuna_v1", c, tok)
    assert ids[0] == tok.bos_token_id and ids.count(IMAGE_TOKEN_INDEX) == 1
    assert tok.decode([i for i in ids if i >= 0][-4:]).endswith("ASSISTANT:")
    assert tok.bos_token_id not in ids[1:]  # the chunk after the image lost its BOS
    assert stop_token_ids("vicuna_v1", tok) == [tok.eos_token_id]
    assert stop_token_ids("llava_llama_2", tok) == [tok.eos_token_id]
    assert stop_token_ids("plain", tok) == [tok.eos_token_id, tok.convert_tokens_to_ids("<0x0A>")]
    assert stop_strings("v0") == ["###"] and stop_strings("vicuna_v1") == ["</s>"]


@pytest.mark.parametrize("turns,reason", [
    ([{"from": "human", "value": "<image>\nHi"}], "no_assistant"),
    ([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}], "missing_image_token"),
    ([{"from": "human", "value": "<image>\nHi <image>"}, {"from": "gpt", "value": "Yo"}], "repeated_image_token"),
    ([{"from": "human", "value": "<image>\nHi"}, {"from": "human", "value": "Yo"}, {"from": "gpt", "value": "x"}],
     "malformed"),
    ([{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": None}], "malformed"),
    ([{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "  "}], "malformed"),
    ("not a list", "malformed"),
])
def test_conversation_errors(toks, turns, reason):
    with pytest.raises(ConversationError) as e:
        tokenize_conversation("vicuna_v1", turns, toks[True])
    assert e.value.reason == reason


def test_leading_gpt_turn_dropped_and_plain_needs_two_turns(toks):
    tok = toks[True]
    c = [{"from": "gpt", "value": "ignored"}] + conv(1)
    ids, labels = tokenize_conversation("vicuna_v1", c, tok)
    assert supervised_runs(tok, ids, labels) == [A1 + "</s>"]
    with pytest.raises(ConversationError, match="malformed"):
        tokenize_conversation("plain", conv(2), tok)


# A template whose answer runs straight into the next turn's text ("...the" + "re: ..."): the
# boundary falls inside the word "there", so segment-wise tokenization cannot match the full one.
GLUED = Template("glued", "two", system="", roles=("re", "ASSISTANT"), sep=" ", sep2="")


def test_mask_mismatch_is_reported_not_zeroed(toks):
    c = [{"from": "human", "value": "<image>\nWhich one?"}, {"from": "gpt", "value": "the"},
         {"from": "human", "value": "And?"}, {"from": "gpt", "value": "the"}]
    assert "therere:" not in render_prompt(GLUED, c)  # sanity: "...: the" + "re: And?"
    assert "ASSISTANT: there: And?" in render_prompt(GLUED, c, add_generation_prompt=False)
    with pytest.raises(ConversationError) as e:
        tokenize_conversation(GLUED, c, toks[True])
    assert e.value.reason == "mask_mismatch"
