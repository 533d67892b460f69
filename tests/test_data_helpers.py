"""Shared fixtures of the data tests (imported by tests/test_data_*.py): tiny LLaMA-style
tokenizers in both legacy modes, and one small synthetic data set in the real formats."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmln.data import synth
from mmln.data.templates import TEMPLATES
from mmln.data.tokenizer import train_tiny_tokenizer


def corpus() -> list[str]:
    extra = [t.system for t in TEMPLATES.values()] + [" ".join(t.roles) for t in TEMPLATES.values()]
    extra += ["[INST] <<SYS>> <</SYS>> [/INST] USER: ASSISTANT: Human: Assistant: ###"] * 5
    # frequent enough that "▁USER" becomes one piece while "USER" (no dummy prefix) is "US" "ER":
    # the token-count difference behind LLaVA's off-by-one label masks with non-legacy tokenizers
    extra += ["USER: ASSISTANT:"] * 50
    return synth.text_corpus(400, seed=0) + extra


@pytest.fixture(scope="session")
def tok_dirs(tmp_path_factory) -> dict[bool, Path]:
    root = tmp_path_factory.mktemp("tok")
    texts = corpus()
    return {legacy: train_tiny_tokenizer(texts, root / f"legacy_{legacy}", vocab_size=600, legacy=legacy)
            for legacy in (True, False)}


@pytest.fixture(scope="session")
def toks(tok_dirs):
    from transformers import AutoTokenizer

    return {legacy: AutoTokenizer.from_pretrained(str(d)) for legacy, d in tok_dirs.items()}


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("synth")
    paths = synth.synthesize(out, image_size=64, n_pretrain=24, n_instruct=40, n_mme_per_subtask=1,
                             n_pope_images=2, n_vqa_images=2, n_caption_images=2, seed=0)
    paths["bad_samples"] = synth.bad_samples(out / "bad")
    return paths


def truth_types(paths: dict[str, Path]) -> dict[tuple[str, str], str]:
    """(id, conversations as JSON) -> type, from the per-type files."""
    out = {}
    for kind in ("conversation", "detail", "complex_reasoning"):
        for r in json.loads(Path(paths[f"instruct_{kind}"]).read_text()):
            out[(r["id"], json.dumps(r["conversations"]))] = kind
    return out
