"""Readers, data-type labelling, seeded subsets and validation splits on synthetic LLaVA files."""
from __future__ import annotations

import json
import logging
import shutil
from collections import Counter

import pytest
from test_data_helpers import synth_data, truth_types  # noqa: F401  (fixture)

from mmln.config import load_config
from mmln.data.records import (
    DataError,
    heuristic_type,
    label_types,
    load_train_val,
    read_records,
    select,
)


def key(r):
    return r.id, json.dumps(r.raw["conversations"])


def test_cc3m_reader(synth_data):
    recs = read_records([synth_data["cc3m_chat"]])
    assert len(recs) == 24
    r = recs[0]
    assert r.id.startswith("GCC_train_") and r.raw["image"] == f"{r.id}.jpg"
    assert r.image_folder == str(synth_data["cc3m_images"])  # <dir>/images picked by default
    assert (synth_data["cc3m_images"] / r.raw["image"]).is_file()


def test_type_join_recovers_every_type(synth_data):
    truth = truth_types(synth_data)
    recs = read_records([synth_data["instruct_150k"]], synth_data["coco_train2017"])
    stats = label_types(recs)
    assert stats == {"file": 0, "join": len(recs), "heuristic": 0}
    assert [r.type for r in recs] == [truth[key(r)] for r in recs]
    assert set(Counter(r.type for r in recs)) == {"conversation", "detail", "complex_reasoning"}
    # the same image id occurs under several types: the id alone could not tell them apart
    by_id = Counter(r.id for r in recs)
    assert max(by_id.values()) > 1


def test_80k_mix_has_no_detail(synth_data):
    truth = truth_types(synth_data)
    recs = read_records([synth_data["instruct_80k"]], synth_data["coco_train2017"])
    label_types(recs)
    assert [r.type for r in recs] == [truth[key(r)] for r in recs]
    counts = Counter(r.type for r in recs)
    assert counts["detail"] == 0 and counts["conversation"] == counts["complex_reasoning"] > 0
    assert len({r.id for r in recs}) == len(recs)  # disjoint images
    with pytest.raises(DataError, match="detail_23k.json"):
        select(recs, types=["detail"])


def test_mix_of_files_types_from_file_names(synth_data):
    recs = read_records([synth_data["instruct_80k"], synth_data["instruct_detail"]], synth_data["coco_train2017"])
    stats = label_types(recs)
    n_detail = len(json.loads(synth_data["instruct_detail"].read_text()))
    assert stats["file"] == n_detail and stats["join"] == len(recs) - n_detail
    assert len(select(recs, types=["detail"])) == n_detail


def test_heuristic_fallback_is_logged_and_sensible(synth_data, tmp_path, caplog):
    truth = truth_types(synth_data)
    shutil.copy(synth_data["instruct_150k"], tmp_path / "llava_instruct_150k.json")  # no per-type files here
    recs = read_records([tmp_path / "llava_instruct_150k.json"], synth_data["coco_train2017"])
    with caplog.at_level(logging.WARNING, logger="mmln.data"):
        stats = label_types(recs)
    assert stats["heuristic"] == len(recs)
    assert "heuristic" in caplog.text and "conversation_58k.json" in caplog.text
    right = [r.type == truth[key(r)] for r in recs]
    conv = [r.type == "conversation" for r in recs if truth[key(r)] == "conversation"]
    assert all(conv) and sum(right) / len(right) >= 0.9
    assert heuristic_type({"conversations": [{"from": "human", "value": "<image>\nDescribe the image in detail."},
                                             {"from": "gpt", "value": "..."}]}) == "detail"
    assert heuristic_type({"conversations": [{"from": "human", "value": "Why might the man be smiling?\n<image>"},
                                             {"from": "gpt", "value": "..."}]}) == "complex_reasoning"


def test_subsets_by_type_and_size_are_seeded(synth_data):
    recs = read_records([synth_data["instruct_150k"]], synth_data["coco_train2017"])
    a = select(list(recs), types=["conversation"], limit=10, seed=1)
    b = select(list(recs), types=["conversation"], limit=10, seed=1)
    c = select(list(recs), types=["conversation"], limit=10, seed=2)
    assert len(a) == 10 and all(r.type == "conversation" for r in a)
    assert [key(r) for r in a] == [key(r) for r in b] != [key(r) for r in c]
    pos = {id(r): i for i, r in enumerate(recs)}
    assert [pos[id(r)] for r in a] == sorted(pos[id(r)] for r in a)  # original order kept
    both = select(list(recs), types=["conversation", "detail"])
    assert {r.type for r in both} == {"conversation", "detail"}
    with pytest.raises(DataError, match="unknown data type"):
        select(recs, types=["chitchat"])


def test_train_val_from_config(synth_data):
    files = f"data.train.files=[{synth_data['instruct_150k']}]"
    folder = f"data.train.image_folder={synth_data['coco_train2017']}"
    cfg = load_config(None, [files, folder, "data.val_fraction=0.25", "data.train.types=[conversation]"])
    train, val = load_train_val(cfg.data)
    n = len(train) + len(val)
    assert len(val) == round(n * 0.25) and not {key(r) for r in train} & {key(r) for r in val}
    again = load_train_val(cfg.data)[1]
    assert [key(r) for r in again] == [key(r) for r in val]
    cfg = load_config(None, [files, folder, f"data.val.files=[{synth_data['instruct_detail']}]"])
    train, val = load_train_val(cfg.data)
    assert len(val) == len(json.loads(synth_data["instruct_detail"].read_text()))
    assert val[0].image_folder == str(synth_data["coco_train2017"])  # defaults to train's folder
    cfg = load_config(None, [files, folder])
    assert load_train_val(cfg.data)[1] == []


def test_reader_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_records([tmp_path / "nope.json"])
    (tmp_path / "obj.json").write_text('{"id": 1}')
    with pytest.raises(DataError, match="JSON array"):
        read_records([tmp_path / "obj.json"])
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        read_records([tmp_path / "broken.json"])
    with pytest.raises(DataError, match="data.train.files"):
        read_records([])
