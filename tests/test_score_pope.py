"""POPE scorer: LLaVA eval_pope.py parsing quirks, hand-computed metrics, file formats."""
from __future__ import annotations

import json

import pytest

from mmln.eval.pope import (
    parse_pope_answer,
    pope_metrics,
    read_pope_annotations,
    score_pope,
    score_pope_files,
    split_name,
    write_pope_answers,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("no", "no"),
        ("NO", "yes"),  # official rule: only "No", "no", "not" count -> upper-case NO is yes
        ("No!", "yes"),  # "No!" is not exactly "No"
        ("No.", "no"),  # text before the first "." is "No"
        ("not", "no"),
        ("Not sure", "yes"),  # "Not" is not in the list
        ("There is no dog in the image.", "no"),
        ("Yes. No.", "yes"),  # only the first sentence counts
        ("No, there is not.", "no"),
        ("no,", "no"),  # commas are removed before splitting
        ("no\nthere is", "yes"),  # split on single spaces only: "no\nthere" is one word
        ("", "yes"),
    ],
)
def test_parse_follows_llava_rule(text: str, expected: str) -> None:
    assert parse_pope_answer(text) == expected


def test_metrics_by_hand() -> None:
    preds = ["yes", "yes", "no", "no", "yes"]
    labels = ["yes", "no", "no", "yes", "yes"]
    m = pope_metrics(preds, labels)
    # tp = 2 (0, 4), fp = 1 (1), tn = 1 (2), fn = 1 (3)
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n"]) == (2, 1, 1, 1, 5)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 5)


def test_model_that_never_says_yes_does_not_crash() -> None:
    m = pope_metrics(["no", "no", "no", "no"], ["yes", "no", "yes", "no"])
    # LLaVA would divide by zero (tp + fp = 0); here precision, recall and f1 are 0
    assert (m["precision"], m["recall"], m["f1"], m["yes_ratio"]) == (0.0, 0.0, 0.0, 0.0)
    assert m["accuracy"] == pytest.approx(0.5)


def test_split_name() -> None:
    assert split_name("/x/coco_pope_random.json") == "random"
    assert split_name("coco_pope_adversarial.json") == "adversarial"
    assert split_name("aokvqa_pope_popular.jsonl") == "popular"
    with pytest.raises(ValueError, match="cannot tell the split"):
        split_name("labels.json")


def _ann(qid: int, label: str) -> dict:
    return {"question_id": qid, "image": f"COCO_val2014_{qid:012d}.jpg", "text": "Is there a dog in the image?", "label": label}


def test_matching_by_category_and_question_id() -> None:
    annotations = {"random": [_ann(1, "yes"), _ann(2, "no")], "popular": [_ann(1, "yes"), _ann(2, "no")]}
    answers = [
        {"question_id": 2, "text": "No", "category": "random"},  # order does not matter
        {"question_id": 1, "text": "Yes", "category": "random"},
        {"question_id": 1, "text": "No", "category": "popular"},
        {"question_id": 2, "text": "No", "category": "popular"},
    ]
    r = score_pope(answers, annotations)
    assert r["random"]["accuracy"] == 1.0
    assert r["popular"]["accuracy"] == 0.5  # q1: said no to a yes
    assert r["popular"]["precision"] == 0.0  # never said yes
    with pytest.raises(ValueError, match=r"no answer for question_id 2 of split 'random'"):
        score_pope(answers[1:], annotations, answers_name="ans.jsonl")
    with pytest.raises(ValueError, match="without a 'category'"):
        score_pope([{"question_id": 1, "text": "Yes"}], annotations)
    with pytest.raises(ValueError, match="two answers for question_id 1"):
        score_pope(answers + [{"question_id": 1, "text": "No", "category": "random"}], annotations)


def test_files_round_trip_and_errors(tmp_path) -> None:
    ann = tmp_path / "coco_pope_random.json"
    ann.write_text("".join(json.dumps(_ann(q, lab)) + "\n" for q, lab in [(1, "yes"), (2, "no"), (3, "yes"), (4, "no")]))
    answers = tmp_path / "answers.jsonl"
    write_pope_answers(answers, [
        {"question_id": 1, "text": "Yes, there is a dog.", "model_id": "m"},
        {"question_id": 2, "text": "NO"},  # yes by the official rule -> false positive
        {"question_id": 3, "text": "No"},  # false negative
        {"question_id": 4, "text": "There is not."},
    ])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    r = score_pope_files(answers, [ann])
    # tp 1, fp 1, fn 1, tn 1 -> everything 0.5
    assert r == {"random": pytest.approx({"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5,
                                          "yes_ratio": 0.5, "tp": 1, "fp": 1, "tn": 1, "fn": 1, "n": 4})}
    short = tmp_path / "short.jsonl"
    write_pope_answers(short, [{"question_id": q, "text": "yes"} for q in (1, 2, 4)])
    with pytest.raises(ValueError, match=r"short\.jsonl: no answer for question_id 3"):
        score_pope_files(short, [ann])
    broken = tmp_path / "coco_pope_popular.json"
    broken.write_text(json.dumps(_ann(1, "maybe")) + "\n")
    with pytest.raises(ValueError, match="label must be yes or no"):
        read_pope_annotations(broken)
    broken.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"coco_pope_popular\.json:1: not a JSON line"):
        read_pope_annotations(broken)
