"""LLaVA-1.5's data: the mix665k format (image paths with source sub-folders under one image root,
text-only ShareGPT records without an `image` key) through the real Dataset, collate and model."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from test_data_helpers import tok_dirs, toks  # noqa: F401  (fixtures)

from mmln.data.dataset import Collator, LlavaDataset, pad_token_id
from mmln.data.images import ClipPreprocess
from mmln.data.records import Record, read_records
from mmln.data.synth import MIX665K_SOURCES, mix665k
from mmln.data.templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mmln.model import build_mllm
from tests.conftest import tiny_config


def test_mix665k_trains_image_and_text_only_records(toks, tmp_path):
    tok = toks[True]
    path = mix665k(tmp_path / "llava15", n_per_source=2, n_text=2)
    raw = json.loads(path.read_text())
    folders = sorted({Path(r["image"]).parent.as_posix() for r in raw if "image" in r})
    assert folders == sorted(f for f, _ in MIX665K_SOURCES) and sum("image" not in r for r in raw) == 2
    ds = LlavaDataset(read_records([path], tmp_path / "llava15"), tok, template="vicuna_v1",
                      image_processor=ClipPreprocess(64), num_image_tokens=16)
    samples = [ds[i] for i in range(len(ds))]
    assert not [s for s in samples if "bad" in s]
    for rec, s in zip(raw, samples):
        n_slots = int((s["input_ids"] == IMAGE_TOKEN_INDEX).sum())
        assert n_slots == ("image" in rec) and (s["pixel_values"] is None) == ("image" not in rec)
        assert (s["labels"] != IGNORE_INDEX).sum() > 0
    assert all(ds.check(i)[0] is None for i in range(len(ds)))
    # a batch mixing both kinds: images stacked for the image samples only, the model splices them in order
    batch = Collator(pad_token_id(tok))([samples[0], samples[-1], samples[1]])
    assert batch["pixel_values"].shape[0] == 2
    assert Collator(pad_token_id(tok))([samples[-1]])["pixel_values"] is None
    mllm = build_mllm(tiny_config(f"model.llm.vocab_size={len(tok)}").model)
    out = mllm(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["pixel_values"])
    assert torch.isfinite(out.loss)
    out = mllm(*(Collator(pad_token_id(tok))(samples[-2:])[k] for k in ("input_ids", "attention_mask", "labels",
                                                                       "pixel_values")))
    assert torch.isfinite(out.loss)


def test_image_token_in_a_text_only_record_is_bad(toks, tmp_path):
    rec = Record(raw={"id": "t1", "conversations": [{"from": "human", "value": "<image>\nHi"},
                                                    {"from": "gpt", "value": "Hello"}]}, file="m.json",
                 image_folder=str(tmp_path))
    ds = LlavaDataset([rec], toks[True], template="vicuna_v1", image_processor=ClipPreprocess(64))
    assert ds[0]["bad"] == "malformed" and "without an 'image'" in ds[0]["detail"]
