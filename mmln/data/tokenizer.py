"""A tiny LLaMA-style tokenizer for tests and the demo (no download).

`train_tiny_tokenizer` trains a SentencePiece BPE model with LLaMA's settings (byte fallback,
split digits, dummy prefix, identity normalization, unk=0 / bos=1 / eos=2, no pad piece) and
writes a Hugging Face tokenizer directory that `AutoTokenizer.from_pretrained(dir)` loads as
`LlamaTokenizer`: adds BOS, no EOS, pad = `<unk>` (id 0, as LLaVA sets it), right padding.

`legacy` selects the LLaMA tokenizer's two behaviours around special tokens (the difference
behind LLaVA's off-by-one label masks with non-legacy tokenizers):
legacy=True puts SentencePiece's dummy-prefix "▁" on text that follows a special token
(`</s>USER` -> `</s> ▁US ER`), legacy=False does not (`</s> US ER`). In transformers 5 the flag
is read from tokenizer_config.json and turned into the Metaspace prepend scheme ("always" /
"first"); `save_pretrained` does not write it back, so this function writes the config itself
and the directory holds `tokenizer.model` (converted on load) rather than a `tokenizer.json`.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from mmln.io import write_bytes, write_text

SPECIAL = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def train_tiny_tokenizer(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1000, legacy: bool = True
) -> Path:
    """Train a LLaMA-style SentencePiece BPE on `texts`; save a HF tokenizer dir; return it.

    `vocab_size` is an upper bound (the corpus may support fewer pieces); byte fallback adds 256
    byte pieces, so anything below ~300 is rejected by SentencePiece.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        # newlines left to byte fallback (<0x0A>), as in LLaMA's vocabulary
        sentence_iterator=iter([t.replace("\n", " ") for t in texts if t.strip()]),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    write_bytes(out / "tokenizer.model", model.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "legacy": legacy,
        "add_bos_token": True,
        "add_eos_token": False,
        "add_prefix_space": True,
        **SPECIAL,
        "pad_token": "<unk>",
        "model_max_length": 2048,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
    }
    write_text(out / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    write_text(out / "special_tokens_map.json", json.dumps({**SPECIAL, "pad_token": "<unk>"}, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------ chat models
# Three chat-template families, each with its model's real Jinja template (as shipped in the
# model's tokenizer_config.json) and its special tokens: (template, bos, eos, extra specials).
CHAT_FAMILIES: dict[str, tuple[str, str | None, str, tuple[str, ...]]] = {
    # Meta-Llama-3-8B-Instruct: header blocks, end of turn <|eot_id|>
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
        "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
        "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
        "{{ content }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
        "<|begin_of_text|>", "<|end_of_text|>", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    # Qwen2-7B-Instruct: ChatML with a default system turn, end of turn <|im_end|>, no BOS
    "chatml": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
        None, "<|im_end|>", ("<|im_start|>", "<|endoftext|>"),
    ),
    # Mistral-7B-Instruct-v0.1: [INST] blocks, the answer ends with EOS; refuses non-alternating roles
    "mistral": (
        "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
        "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
        "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
        "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
        "roles are supported!') }}{% endif %}{% endfor %}",
        "<s>", "</s>", ("[INST]", "[/INST]"),
    ),
}


# the pre-tokenization regex of Llama-3 (and, with single digits, Qwen2): newline runs are one piece
PIECES_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_tiny_chat_tokenizer(texts: Iterable[str], out_dir: str | Path, family: str) -> Path:
    """A word-level tokenizer of a chat-model family with its real chat template and special tokens.

    Every piece of `texts` is one token (llama3 / chatml: byte-level pieces of the Llama-3
    regex, "Ġword", "ĊĊ" for a blank line; mistral: SentencePiece-style "▁word") and
    every special token of the family is one id, so tests can state expected tokens by hand.
    Saved with `save_pretrained`; `AutoTokenizer.from_pretrained(dir)` loads it with
    `chat_template` set. The template adds BOS itself where the family has one (text is
    tokenized with `add_special_tokens=False`, as the template's rendering already holds them).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    template, bos, eos, extra = CHAT_FAMILIES[family]
    specials = ["<unk>", *([bos] if bos else []), eos, *extra]
    if family == "mistral":  # SentencePiece-style: "▁" marks a space, prefixed to the text's start
        pre = pre_tokenizers.Metaspace(prepend_scheme="first")
        decoder = decoders.Metaspace(prepend_scheme="first")
    else:  # tiktoken-style byte-level pieces split by the Llama-3 / Qwen2 regex
        pre = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PIECES_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        decoder = decoders.ByteLevel()
    # the vocabulary: every piece of the texts and of the template's own words, also without its
    # space marker (a word right after a special token or a newline) and, for mistral, after "\n"
    pieces: dict[str, None] = {}
    spaces = [f"x{w}x" for w in (" ", "\n", "\n\n", "\n\n\n", " \n")] + [" ", "\n", "\n\n", "\n\n\n"]
    for text in [*texts, template, "system user assistant You are a helpful assistant.", *spaces]:
        for piece, _ in pre.pre_tokenize_str(text):
            bare = piece.lstrip("▁Ġ")
            pieces.update(dict.fromkeys([piece, bare, *(["\n" + bare, "▁\n" + bare] if family == "mistral" else [])]))
    vocab = {t: i for i, t in enumerate(dict.fromkeys([*specials, *(p for p in pieces if p)]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre, decoder
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token=bos, eos_token=eos, pad_token=eos,
        additional_special_tokens=list(extra), model_max_length=2048, padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = template
    out = Path(out_dir)
    fast.save_pretrained(out)
    return out
