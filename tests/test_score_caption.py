"""Captioning scorer: pycocoevalcap PTB tokenizer (Java) + CIDEr-D, by hand on tiny corpora.

Java is spawned once per ptb_tokenize call, so the Java cases are batched into few calls.
"""
from __future__ import annotations

import json
import math
import shutil

import pytest

from mmln.eval import caption
from mmln.eval.caption import (
    JavaNotFoundError,
    cider_d,
    ptb_tokenize,
    read_caption_results,
    read_karpathy_split,
    score_caption_files,
    score_captions,
    write_caption_results,
)

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTB tokenizer needs java")


@needs_java
def test_ptb_tokenizer_output() -> None:
    out = ptb_tokenize({
        "punct": ["A man's dog isn't running, quickly!", "Two dogs... on a \"red\" mat?"],
        "brackets": ["a dog (black) [big] {x}"],
        "contractions": ["Don't stop; it's the dogs' bowl: I'd've said cannot"],
        "numbers": ["U.S. flag, 3.5 kg, 1,000 birds - e.g. well-known"],
        "breaks": ["line\rbreak\u2028here"],  # would shift every later caption without the fix
        "empty": ["", "   "],
        "none": [],
        "last": ["final caption."],
    })
    assert out["punct"] == ["a man 's dog is n't running quickly", "two dogs on a red mat"]
    # brackets survive, lower-cased: the wrapper's filter only knows "-LRB-"/"-RRB-" in upper case
    assert out["brackets"] == ["a dog -lrb- black -rrb- -lsb- big -rsb- -lcb- x -rcb-"]
    assert out["contractions"] == ["do n't stop it 's the dogs bowl i 'd 've said can not"]
    assert out["numbers"] == ["u.s. flag 3.5 kg 1,000 birds e.g. well-known"]
    assert out["breaks"] == ["line break here"]
    assert out["empty"] == ["", ""]
    assert out["none"] == []
    assert out["last"] == ["final caption"]


def test_cider_of_a_single_image_is_zero() -> None:
    # idf = log(#images) - log(df) = log 1 - log 1 = 0 for every n-gram
    assert cider_d({7: ["a dog runs", "a dog"]}, {7: "a dog runs"}) == (0.0, [0.0])


def test_cider_by_hand_and_clipping() -> None:
    refs = {1: ["cat"], 2: ["dog"]}
    # every n-gram has idf log 2 (L). "cat" vs "cat": unigram cosine 1, no 2/3/4-grams,
    # same length -> (1 + 0 + 0 + 0) / 4 * 10 = 2.5
    score, per_image = cider_d(refs, {1: "cat", 2: "dog"})
    assert per_image == pytest.approx([2.5, 2.5])
    assert score == pytest.approx(2.5)
    # "cat cat cat": clipped unigram min(3L, L) * L / (3L * L) = 1/3; the length penalty uses bigram
    # counts (2 vs 0): exp(-2^2 / (2 * 6^2)) -> 10/4 * 1/3 * exp(-1/18) = 0.78830; repeating a word
    # earns less, not more (unclipped cosine would give 1 -> 2.5 * exp(-1/18))
    _, per_image = cider_d(refs, {1: "cat cat cat", 2: "dog"})
    assert per_image[0] == pytest.approx(10 / 12 * math.exp(-1 / 18))
    assert per_image[0] < 2.5
    with pytest.raises(ValueError, match="same images"):
        cider_d(refs, {1: "cat"})


@needs_java
def test_score_captions_through_the_tokenizer() -> None:
    refs = {1: ["A cat."], 2: ["The dog!"]}
    r = score_captions({1: "a CAT", 2: "dog", 99: "ignored"}, refs)
    # tokenized refs "a cat", "the dog"; every n-gram idf log 2.
    # image 1 identical: unigram and bigram cosines 1 -> (1 + 1) / 4 * 10 = 5
    # image 2 "dog" vs "the dog": unigram 1/sqrt(2), bigram 0, length penalty exp(-1/72)
    #   -> 2.5 / sqrt(2) * exp(-1/72) = 1.74338
    raw = (5 + 2.5 / math.sqrt(2) * math.exp(-1 / 72)) / 2
    assert r["CIDEr_raw"] == pytest.approx(raw)
    assert r["CIDEr"] == pytest.approx(100 * raw)  # 337.17
    assert r["n_images"] == 2


def test_missing_result_is_an_error() -> None:
    with pytest.raises(ValueError, match="no caption for 1 image"):
        score_captions({1: "a cat"}, {1: ["a cat"], 2: ["a dog"]})


def test_missing_java_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setattr(caption.shutil, "which", lambda name: None)
    with pytest.raises(JavaNotFoundError, match="apt-get install openjdk-17-jre-headless"):
        score_captions({1: "a", 2: "b"}, {1: ["a"], 2: ["b"]})


def _karpathy() -> dict:
    def image(cocoid: int | None, imgid: int, split: str, raws: list[str]) -> dict:
        d = {"filepath": "val2014", "filename": f"{imgid}.jpg", "imgid": imgid, "split": split,
             "sentences": [{"raw": r, "tokens": r.lower().split()} for r in raws]}
        if cocoid is not None:
            d["cocoid"] = cocoid
        return d
    return {"images": [image(391895, 0, "test", ["A cat."]), image(522418, 1, "train", ["x"]),
                       image(None, 2, "test", ["The dog!"])]}


def test_karpathy_reader(tmp_path) -> None:
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(_karpathy()))
    # cocoid when present, else imgid; only the requested split
    assert read_karpathy_split(path, "test") == {391895: ["A cat."], 2: ["The dog!"]}
    with pytest.raises(ValueError, match="no image in split 'val'"):
        read_karpathy_split(path, "val")
    res = tmp_path / "res.json"
    write_caption_results(res, [{"image_id": 391895, "caption": "a cat"}])
    assert read_caption_results(res) == {391895: "a cat"}
    with pytest.raises(ValueError, match=r"res\.json: no caption for 1 of the 2 images of split 'test', e\.g\. image_id 2"):
        score_caption_files(res, path, "test")
    res.write_text(json.dumps([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}]))
    with pytest.raises(ValueError, match="two captions for image_id 1"):
        read_caption_results(res)
