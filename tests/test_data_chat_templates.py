"""`data.template=chat_template`: the tokenizer's own Jinja template, masks found from the rendered text.

Three tiny word-level tokenizers carry the real templates of Llama-3-Instruct (header blocks),
Qwen2-Instruct (ChatML) and Mistral-Instruct ([INST]); every expected token list below was
checked by hand against the template text. "*" marks a supervised token (label = its id).
"""
from __future__ import annotations

import copy

import pytest
from transformers import AutoTokenizer

from mmln.data.dataset import BadSampleError, LlavaDataset
from mmln.data.images import ClipPreprocess
from mmln.data.records import Record
from mmln.data.templates import (
    IGNORE_INDEX, IMAGE_TOKEN_INDEX, ConversationError, chat_end_of_turn, encode_prompt, stop_token_ids,
    tokenize_conversation,
)
from mmln.data.tokenizer import CHAT_FAMILIES, train_tiny_chat_tokenizer

TEXTS = ["What is in the image ? A red cat sits on a mat .", "Is there a dog ? Yes No Question"]
CONV = [
    {"from": "human", "value": "What is in the image ?\n<image>"},  # <image> moves to the front
    {"from": "gpt", "value": "A red cat ."},
    {"from": "human", "value": "Is there a dog ?"},
    {"from": "gpt", "value": "No"},
]

EXPECTED = {
    "llama3": [
        "<|begin_of_text|>", "<|start_header_id|>", "user", "<|end_header_id|>", "ĊĊ", "<image>", "Ċ",
        "What", "Ġis", "Ġin", "Ġthe", "Ġimage", "Ġ?", "<|eot_id|>",
        "<|start_header_id|>", "assistant", "<|end_header_id|>", "ĊĊ",
        "A*", "Ġred*", "Ġcat*", "Ġ.*", "<|eot_id|>*",
        "<|start_header_id|>", "user", "<|end_header_id|>", "ĊĊ", "Is", "Ġthere", "Ġa", "Ġdog", "Ġ?", "<|eot_id|>",
        "<|start_header_id|>", "assistant", "<|end_header_id|>", "ĊĊ", "No*", "<|eot_id|>*",
    ],
    "chatml": [  # the template's default system turn first; the "\n" after <|im_end|> is prompt
        "<|im_start|>", "system", "Ċ", "You", "Ġare", "Ġa", "Ġhelpful", "Ġassistant", ".", "<|im_end|>", "Ċ",
        "<|im_start|>", "user", "Ċ", "<image>", "Ċ", "What", "Ġis", "Ġin", "Ġthe", "Ġimage", "Ġ?", "<|im_end|>", "Ċ",
        "<|im_start|>", "assistant", "Ċ", "A*", "Ġred*", "Ġcat*", "Ġ.*", "<|im_end|>*", "Ċ",
        "<|im_start|>", "user", "Ċ", "Is", "Ġthere", "Ġa", "Ġdog", "Ġ?", "<|im_end|>", "Ċ",
        "<|im_start|>", "assistant", "Ċ", "No*", "<|im_end|>*", "Ċ",
    ],
    "mistral": [  # answers follow [/INST] directly and end with EOS; no "▁" after <image> (a special token)
        "<s>", "[INST]", "▁", "<image>", "\nWhat", "▁is", "▁in", "▁the", "▁image", "▁?", "▁", "[/INST]",
        "A*", "▁red*", "▁cat*", "▁.*", "</s>*",
        "[INST]", "▁Is", "▁there", "▁a", "▁dog", "▁?", "▁", "[/INST]", "No*", "</s>*",
    ],
}
END_OF_TURN = {"llama3": "<|eot_id|>", "chatml": "<|im_end|>", "mistral": "</s>"}


@pytest.fixture(scope="module")
def chat_toks(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_tok")
    return {f: AutoTokenizer.from_pretrained(str(train_tiny_chat_tokenizer(TEXTS, root / f, f))) for f in CHAT_FAMILIES}


def shown(tok, ids, labels=None):
    out = []
    for k, i in enumerate(ids):
        t = "<image>" if i == IMAGE_TOKEN_INDEX else tok.convert_ids_to_tokens(i)
        out.append(t + ("*" if labels is not None and labels[k] != IGNORE_INDEX else ""))
    return out


@pytest.mark.parametrize("family", list(EXPECTED))
def test_masks_token_by_token(chat_toks, family):
    tok = chat_toks[family]
    ids, labels = tokenize_conversation("chat_template", CONV, tok)
    assert shown(tok, ids, labels) == EXPECTED[family]
    assert "<unk>" not in shown(tok, ids)  # the tiny vocabulary covers the conversation
    # labels are the ids themselves where supervised, and input_ids are the whole rendering's ids
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(ids, labels))
    text = tok.apply_chat_template([{"role": "user", "content": "<image>\nWhat is in the image ?"},
                                    {"role": "assistant", "content": "A red cat ."},
                                    {"role": "user", "content": "Is there a dog ?"},
                                    {"role": "assistant", "content": "No"}], tokenize=False)
    consumer = copy.deepcopy(tok)  # as transformers' LlavaProcessor and vLLM tokenize it: <image> a special token
    consumer.add_tokens(["<image>"], special_tokens=True)
    image_id = consumer.convert_tokens_to_ids("<image>")
    whole = [IMAGE_TOKEN_INDEX if i == image_id else i for i in consumer(text, add_special_tokens=False)["input_ids"]]
    assert ids == whole


@pytest.mark.parametrize("family", list(EXPECTED))
def test_eval_prompt_stops_and_yes_no(chat_toks, family, tiny_cfg):
    from mmln.data.templates import chat_answer_token
    from mmln.eval.runner import Decoding, Runner
    from mmln.model import build_mllm

    tok = chat_toks[family]
    ids = encode_prompt("chat_template", CONV[:3], tok)
    # the prompt is the training rendering up to (and including) the generation prompt of turn 4
    train = EXPECTED[family]
    cut = len(train) - (2 if family == "mistral" else 3 if family == "chatml" else 2)
    assert shown(tok, ids) == [t.rstrip("*") for t in train[:cut]]
    eot = END_OF_TURN[family]
    assert chat_end_of_turn(tok) == eot
    assert stop_token_ids("chat_template", tok) == list(dict.fromkeys([tok.eos_token_id, tok.convert_tokens_to_ids(eot)]))
    runner = Runner(build_mllm(tiny_cfg.model), tok, ClipPreprocess(64), Decoding("chat_template"))
    assert runner.eos_ids == stop_token_ids("chat_template", tok)
    yes, no = runner.yes_no_token_ids()
    assert tok.convert_ids_to_tokens([yes, no]) == ["Yes", "No"]  # no leading space after the generation prompt
    assert chat_answer_token(tok, "Yes") == yes


# a template that refuses long conversations, and one that drops history (only the last two messages):
# the first is unrenderable, the second changes the text BEFORE a past turn, so its mask is unrecoverable
# (templates that only rewrite past answers keep every turn: tests/test_chat_multiturn.py)
REFUSES = ("{% if messages|length > 2 %}{{ raise_exception('one exchange only') }}{% endif %}"
           "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
           "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
DROPS = ("{% for m in messages[-2:] %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize("template,reason", [(REFUSES, "template_error"), (DROPS, "mask_mismatch")])
def test_unrenderable_or_unrecoverable_is_a_counted_bad_sample(chat_toks, template, reason, tmp_path):
    tok = chat_toks["chatml"]
    old = tok.chat_template
    tok.chat_template = template
    try:
        with pytest.raises(ConversationError) as e:
            tokenize_conversation("chat_template", CONV, tok)
        assert e.value.reason == reason
        tokenize_conversation("chat_template", CONV[:2], tok)  # one exchange renders and masks fine
        rec = Record(raw={"id": "r1", "image": "x.png", "conversations": CONV}, file="f.json",
                     image_folder=str(tmp_path))
        kw = dict(template="chat_template", image_processor=ClipPreprocess(64), num_image_tokens=16)
        assert LlavaDataset([rec], tok, **kw)[0]["bad"] == reason
        with pytest.raises(BadSampleError, match=f"f.json: record id 'r1'.*{reason}"):
            LlavaDataset([rec], tok, on_bad_sample="error", **kw)[0]
    finally:
        tok.chat_template = old


def test_tokenizer_without_template_is_a_config_error(chat_toks):
    tok = chat_toks["llama3"]
    old, tok.chat_template = tok.chat_template, None
    try:
        with pytest.raises(ValueError, match="has no chat template.*set model.llm.tokenizer"):
            tokenize_conversation("chat_template", CONV, tok)
    finally:
        tok.chat_template = old
