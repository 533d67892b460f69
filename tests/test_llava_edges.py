"""LLaVA's own preprocessing at its two edges, against a statement of its rules (not mmln's output).

LLaVA (`llava/train/train.py`, with its slow SentencePiece LLaMA tokenizer, legacy):
1. `preprocess_multimodal`: a human turn holding `<image>` becomes
   `("<image>" + "\\n" + rest.strip()).strip()`, so a turn that is only `<image>` stays "<image>";
2. `tokenizer_image_token`: the prompt is split at "<image>", every chunk is tokenized on its own
   (BOS kept on the first only) and the image slot goes between the chunks;
3. the slow tokenizer splits a chunk at special tokens (`<s>`, `</s>`, `<unk>`) and encodes every
   piece of text with SentencePiece itself (`sp.encode`, with its dummy prefix): a piece that starts
   with a space therefore starts with "▁▁"-worth of pieces.
`reference_ids` below is exactly that, on the `sentencepiece` library and the tokenizer's own
`tokenizer.model`; the prompt strings are written out by hand from LLaVA's conversation templates.
"""
import pytest
import sentencepiece as spm

from mmln.data.templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX, tokenize_conversation
from test_data_helpers import tok_dirs, toks  # noqa: F401  (fixtures)

SPECIALS = {"<s>": 1, "</s>": 2, "<unk>": 0}
VICUNA_SYS = ("A chat between a curious user and an artificial intelligence assistant. "
              "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAMA2_SYS = ("You are a helpful language and vision assistant. You are able to understand the visual content "
              "that the user provides, and assist the user with a variety of tasks using natural language.")


def reference_ids(sp, prompt: str) -> list[int]:
    ids = [SPECIALS["<s>"]]
    for k, chunk in enumerate(prompt.split("<image>")):
        if k:
            ids.append(IMAGE_TOKEN_INDEX)
        piece = ""
        i = 0
        while i < len(chunk):  # rule 3: split at special tokens, SentencePiece on each text piece
            hit = next((s for s in SPECIALS if chunk.startswith(s, i)), None)
            if hit:
                ids += sp.encode(piece) if piece else []
                ids.append(SPECIALS[hit])
                piece, i = "", i + len(hit)
            else:
                piece, i = piece + chunk[i], i + 1
        ids += sp.encode(piece) if piece else []
    return ids


CASES = {
    # rule 1: an image-only human turn is "<image>", no newline after it (on main: "<image>\n", one token more)
    "vicuna-image-only": ("vicuna_v1", [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A red circle ."}],
                          f"{VICUNA_SYS} USER: <image> ASSISTANT: A red circle .</s>"),
    "llama2-image-only": ("llava_llama_2", [{"from": "human", "value": " <image> "},
                                            {"from": "gpt", "value": "A circle ."}],
                          f"[INST] <<SYS>>\n{LLAMA2_SYS}\n<</SYS>>\n\n<image> [/INST] A circle . </s>"),
    # rule 3 after <image>: plain puts the caption right after the image; one starting with a space
    # keeps SentencePiece's own "▁" (on main: lost)
    "plain-leading-space": ("plain", [{"from": "human", "value": "<image>\nDescribe."},
                                      {"from": "gpt", "value": " a red circle on the left ."}],
                            "<image> a red circle on the left .\n"),
    # and the common case, multi-turn, text after </s> (legacy: "▁USER")
    "vicuna-two-rounds": ("vicuna_v1", [{"from": "human", "value": "What is it ?\n<image>"},
                                        {"from": "gpt", "value": "A circle ."},
                                        {"from": "human", "value": "Is it red ?"}, {"from": "gpt", "value": "Yes"}],
                          f"{VICUNA_SYS} USER: <image>\nWhat is it ? ASSISTANT: A circle .</s>"
                          "USER: Is it red ? ASSISTANT: Yes</s>"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ids_follow_llavas_rules(case, tok_dirs, toks):  # noqa: F811
    template, conv, prompt = CASES[case]
    sp = spm.SentencePieceProcessor(model_file=str(tok_dirs[True] / "tokenizer.model"))
    ids, labels = tokenize_conversation(template, conv, toks[True])
    assert ids == reference_ids(sp, prompt), (toks[True].convert_ids_to_tokens([i for i in ids if i >= 0]),)
    assert any(label != IGNORE_INDEX for label in labels)


def test_text_after_a_special_token_starting_with_a_space(tok_dirs, toks):  # noqa: F811
    # rule 3 after a special token (legacy): "</s> x" encodes " x" with SentencePiece's dummy prefix
    from mmln.data.templates import tokenize_segments

    sp = spm.SentencePieceProcessor(model_file=str(tok_dirs[True] / "tokenizer.model"))
    text = "A circle .</s> USER: is it red ?"
    ids, _ = tokenize_segments([(text, False)], toks[True])
    assert ids == reference_ids(sp, text)
