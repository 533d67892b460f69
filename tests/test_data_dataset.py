"""The Dataset, collate and bad-sample handling (both policies, in-process and in DataLoader workers)."""
from __future__ import annotations

import json

import pytest
import torch
from test_data_helpers import synth_data, tok_dirs, toks  # noqa: F401  (fixtures)
from test_data_templates import GLUED

from mmln.data.dataset import BadSampleError, BadSampleLog, Collator, LlavaDataset, truncate
from mmln.data.images import ClipPreprocess
from mmln.data.records import Record, read_records
from mmln.data.templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX

REASONS = ("missing_image_token", "repeated_image_token", "missing_image", "corrupt_image", "truncated_image",
           "malformed", "no_assistant")


def expected_reason(rid: str) -> str:
    """bad_samples() names each bad record after its defect: bad_<reason>[_detail]."""
    return next((r for r in REASONS if rid.startswith(f"bad_{r}")), None) or next(
        r for r in REASONS if rid.startswith(f"bad_{r.split('_')[0]}_"))


@pytest.fixture(scope="module")
def expected(synth_data) -> dict[str, str]:
    recs = json.loads(synth_data["bad_samples"].read_text())
    out = {r["id"]: expected_reason(r["id"]) for r in recs if r["id"].startswith("bad_")}
    assert set(out.values()) == set(REASONS)  # one record per bad-input kind at least
    return out


def dataset(records, tok, template="vicuna_v1", **kw) -> LlavaDataset:
    kw.setdefault("num_image_tokens", 16)
    return LlavaDataset(records, tok, template=template, image_processor=ClipPreprocess(64), **kw)


def test_sample_and_collate(synth_data, toks):
    tok = toks[True]
    ds = dataset(read_records([synth_data["instruct_80k"]], synth_data["coco_train2017"]), tok)
    s = ds[0]
    assert set(s) == {"id", "input_ids", "labels", "pixel_values"}
    assert s["input_ids"].dtype == torch.long and s["labels"].shape == s["input_ids"].shape
    assert s["pixel_values"].shape == (3, 64, 64) and s["pixel_values"].dtype == torch.float32
    assert (s["input_ids"] == IMAGE_TOKEN_INDEX).sum() == 1
    samples = [ds[i] for i in range(4)]
    b = Collator(tok.pad_token_id)(samples)
    lens = [len(x["input_ids"]) for x in samples]
    assert b["input_ids"].shape == (4, max(lens)) and b["pixel_values"].shape == (4, 3, 64, 64)
    assert b["attention_mask"].sum(1).tolist() == lens and b["bad"] == [] and b["empty"] is False
    assert b["ids"] == [x["id"] for x in samples]
    for k, n in enumerate(lens):
        assert torch.equal(b["input_ids"][k, :n], samples[k]["input_ids"])
        assert (b["input_ids"][k, n:] == 0).all() and (b["labels"][k, n:] == IGNORE_INDEX).all()


def test_bad_samples_skip_counts_every_reason(synth_data, toks, expected):
    ds = dataset(read_records([synth_data["bad_samples"]]), toks[True])
    out = [ds[i] for i in range(len(ds))]
    got = {s["id"]: s["bad"] for s in out if "bad" in s}
    assert got == expected
    assert sorted(s["id"] for s in out if "bad" not in s) == ["good_0", "good_1", "good_2"]
    assert all(s["file"] == str(synth_data["bad_samples"]) for s in out if "bad" in s)
    batch = Collator(0)(out)
    assert batch["input_ids"].shape[0] == 3 and sorted(batch["bad"]) == sorted(expected.items())
    log = BadSampleLog()
    log.update(batch)
    assert log.total == len(expected) and log.as_dict()["malformed"] == 3
    text = log.summary()
    for rid, reason in expected.items():
        assert rid in text and reason in text


@pytest.mark.parametrize("reason", REASONS)
def test_bad_samples_error_names_file_id_reason(synth_data, toks, reason):
    records = [r for r in read_records([synth_data["bad_samples"]])
               if r.id.startswith("bad_") and expected_reason(r.id) == reason][:1]
    assert records
    rid = records[0].id
    ds = dataset(records, toks[True], on_bad_sample="error")
    with pytest.raises(BadSampleError) as e:
        ds[0]
    msg = str(e.value)
    assert str(synth_data["bad_samples"]) in msg and repr(rid) in msg and expected_reason(rid) in msg
    assert (e.value.file, e.value.record_id, e.value.reason) == (str(synth_data["bad_samples"]), rid, expected_reason(rid))


def test_bad_samples_through_dataloader_workers(synth_data, toks, expected):
    ds = dataset(read_records([synth_data["bad_samples"]]), toks[True])
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=Collator(0))
    log, good, flags = BadSampleLog(), [], []
    for batch in loader:
        log.extend(batch["bad"])
        good += batch["ids"]
        flags.append(batch["empty"])
    assert sorted(good) == ["good_0", "good_1", "good_2"]
    assert log.as_dict() == {r: list(expected.values()).count(r) for r in set(expected.values())}
    assert {rid for ids in log.ids.values() for rid in ids} == set(expected)
    assert True in flags  # a batch made only of bad records comes through, flagged empty
    # error policy: raised in a worker, re-raised in the main process with file, id and reason
    ds = dataset([r for r in ds.records if r.id == "bad_missing_image"], toks[True], on_bad_sample="error")
    with pytest.raises(BadSampleError, match=r"bad_instruct.json: record id 'bad_missing_image'.*missing_image") as e:
        it = iter(torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, collate_fn=Collator(0)))
        try:
            next(it)
        finally:  # torch takes ~5 s per worker to reap them when the iterator dies with an exception
            it._shutdown_workers()
    assert str(e.value).startswith("bad sample in ") and "\n" not in str(e.value)  # one line, no worker traceback


def test_empty_batch_flag():
    b = Collator(0)([{"bad": "missing_image", "id": "x", "file": "f", "detail": ""}])
    assert b["empty"] is True and b["input_ids"].shape == (0, 0) and b["bad"] == [("x", "missing_image")]


def test_no_supervised_token_after_truncation(synth_data, toks):
    tok = toks[True]
    recs = read_records([synth_data["instruct_80k"]], synth_data["coco_train2017"])[:1]
    full = dataset(recs, tok, max_length=None)[0]
    first_sup = int((full["labels"] != IGNORE_INDEX).nonzero()[0])
    # expanded position of the first supervised token = index + (num_image_tokens - 1)
    cut = first_sup + 16 - 1
    s = dataset(recs, tok, max_length=cut)[0]
    assert s["bad"] == "no_supervised_tokens"
    s = dataset(recs, tok, max_length=cut + 1)[0]
    assert "bad" not in s and (s["labels"] != IGNORE_INDEX).sum() == 1 and len(s["input_ids"]) == first_sup + 1
    with pytest.raises(BadSampleError, match="no_supervised_tokens"):
        dataset(recs, tok, max_length=cut, on_bad_sample="error")[0]


def test_truncate_equals_cutting_the_expanded_sequence():
    ids = [1, 5, IMAGE_TOKEN_INDEX, 6, 7, 8, 9]
    labels = [-100, -100, -100, -100, 7, 8, 9]
    n_img = 4
    expanded = [t for t in ids for _ in range(n_img if t == IMAGE_TOKEN_INDEX else 1)]
    for max_length in range(1, 12):
        got, lab = truncate(ids, labels, n_img, max_length)
        exp = []  # text ids whose expanded position survives the model's cut
        for pos, t in enumerate(expanded[:max_length]):
            if t != IMAGE_TOKEN_INDEX or (pos == 0 or expanded[pos - 1] != IMAGE_TOKEN_INDEX):
                exp.append(t)
        assert got == exp and lab == labels[: len(got)]


def test_mask_mismatch_is_a_counted_bad_sample(synth_data, toks):
    rec = Record({"id": "m1", "image": "good_0.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhich one?"}, {"from": "gpt", "value": "the"},
        {"from": "human", "value": "And?"}, {"from": "gpt", "value": "the"}]},
        "mm.json", str(synth_data["bad_samples"].parent / "images"))
    ds = dataset([rec], toks[True], template=GLUED)
    assert ds[0]["bad"] == "mask_mismatch"
    ds.on_bad_sample = "error"
    with pytest.raises(BadSampleError, match="mm.json.*'m1'.*mask_mismatch"):
        ds[0]


def test_plain_template_on_cc3m(synth_data, toks):
    tok = toks[False]
    recs = read_records([synth_data["cc3m_chat"]])
    ds = dataset(recs, tok, template="plain")
    s = ds[0]
    caption = recs[0].raw["conversations"][1]["value"]
    sup = [i for i, lab in zip(s["input_ids"].tolist(), s["labels"].tolist()) if lab != IGNORE_INDEX]
    assert tok.decode(sup) == caption + "\n"
    assert s["input_ids"][:2].tolist() == [tok.bos_token_id, IMAGE_TOKEN_INDEX]
    # ids are JSON-serialisable record ids, and every record decodes
    assert all("bad" not in ds[i] for i in range(len(ds)))
    json.dumps([ds[i]["id"] for i in range(3)])


def test_an_image_path_leaving_the_image_folder_is_a_counted_bad_sample(synth_data, toks, tmp_path):
    import shutil

    good = json.loads(synth_data["instruct_80k"].read_text())[0]
    folder = tmp_path / "images"
    folder.mkdir()
    real = next(iter(sorted(synth_data["coco_train2017"].iterdir())))
    shutil.copy(real, folder / "inside.jpg")
    shutil.copy(real, tmp_path / "outside.jpg")  # a real image, just not in the folder
    recs = [{**good, "id": "in", "image": "inside.jpg"}, {**good, "id": "up", "image": "../outside.jpg"},
            {**good, "id": "abs", "image": str(tmp_path / "outside.jpg")},
            {**good, "id": "dots", "image": "./inside.jpg"}]
    f = tmp_path / "recs.json"
    f.write_text(json.dumps(recs))
    out = {s["id"]: s.get("bad") for s in (lambda ds: [ds[i] for i in range(len(ds))])(
        dataset(read_records([f], folder), toks[True]))}
    assert out == {"in": None, "up": "image_outside_folder", "abs": "image_outside_folder", "dots": None}
