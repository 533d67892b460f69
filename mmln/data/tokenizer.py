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
