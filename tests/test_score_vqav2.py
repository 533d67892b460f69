"""VQAv2 scorer: the official vqaEval.py normalization quirks, soft accuracy by hand, file formats."""
from __future__ import annotations

import json

import pytest

from mmln.eval.vqav2 import (
    normalize_answer,
    paper_postprocess,
    process_digit_article,
    process_punctuation,
    read_vqav2_results,
    score_vqav2,
    score_vqav2_files,
    vqa_accuracy,
    write_vqav2_results,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0.5", "0.5"),  # a dot before a digit stays
        ("5.", "5"),  # other dots go
        ("red,blue", "red blue"),  # punctuation not touching a space becomes a space
        ("red, blue", "red blue"),  # ", " touches a space -> deleted
        ("1,000 x-ray", "1000 xray"),  # a digit-comma-digit anywhere: ALL punctuation deleted
        ("yes!", "yes "),
        ("can't", "can't"),  # the apostrophe is not in the official list
        ("10:30", "10:30"),  # neither is ":"
        ("...", ""),
        ("." * 40, "." * 8),  # re.UNICODE (=32) passed as count: only 32 periods removed
    ],
)
def test_process_punctuation(text: str, expected: str) -> None:
    assert process_punctuation(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Two dogs", "2 dogs"),
        ("none", "0"),
        ("the dog", "dog"),
        ("An Apple", "apple"),
        ("dont", "don't"),
        ("Im", "im"),  # the official table's "Im" key is capitalised and never matches
        ("  a   cat  ", "cat"),
    ],
)
def test_process_digit_article(text: str, expected: str) -> None:
    assert process_digit_article(text) == expected


def test_normalize_answer() -> None:
    assert normalize_answer("The two dogs.") == "2 dogs"


def test_soft_accuracy_leave_one_out_by_hand() -> None:
    humans = ["cat"] * 2 + ["dog"] * 8
    # 2 matches: leaving out a "cat" (2 subsets) leaves 1 -> 1/3; leaving out a "dog" (8) leaves 2 -> 2/3
    # mean = (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert vqa_accuracy("cat", humans) == pytest.approx(0.6)
    # 1 match: (1 * 0 + 9 * 1/3) / 10 = 0.3
    assert vqa_accuracy("cat", ["cat"] + ["dog"] * 9) == pytest.approx(0.3)
    # 3 matches: (3 * 2/3 + 7 * 1) / 10 = 0.9
    assert vqa_accuracy("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx(0.9)
    # 4 matches: every subset has >= 3 -> 1
    assert vqa_accuracy("cat", ["cat"] * 4 + ["dog"] * 6) == pytest.approx(1.0)
    assert vqa_accuracy("bird", humans) == 0.0


def test_unanimous_answers_are_not_normalized() -> None:
    # ten identical human answers: no normalization on either side, exact case-sensitive match
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0  # but strip / newline handling always happens
    # one dissenting human answer switches normalization on: "two" -> "2", "Yes" -> "yes"
    assert vqa_accuracy("two", ["2"] * 9 + ["3"]) == pytest.approx(1.0)
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["no"]) == pytest.approx(1.0)


def test_normalized_matches() -> None:
    assert vqa_accuracy("0.5.", ["0.5"] * 5 + ["half"] * 5) == pytest.approx(1.0)  # trailing dot removed
    assert vqa_accuracy("dont", ["don't"] * 4 + ["no"] * 6) == pytest.approx(1.0)  # contraction restored
    assert vqa_accuracy("a dog", ["dog"] * 3 + ["cat"] * 7) == pytest.approx(0.9)  # article dropped
    assert vqa_accuracy("Two", ["2"] * 2 + ["two"] * 1 + ["3"] * 7) == pytest.approx(0.9)  # 3 matches after mapping


def test_paper_postprocess() -> None:
    assert paper_postprocess("Yes, it is.\nQuestion: what color?") == "Yes"
    assert paper_postprocess("no there isn't") == "No"
    assert paper_postprocess("two dogs###Question") == "two dogs"
    assert paper_postprocess(" red </s>") == "red"
    assert paper_postprocess("snow") == "snow"  # whole words only
    assert paper_postprocess("Answer: yes") == ""  # cut at the very start, as the harness does
    assert paper_postprocess("I know yes") == "Yes"


def _ann(qid: int, humans: list[str], answer_type: str, question_type: str = "what") -> dict:
    return {
        "question_id": qid, "image_id": 1, "question_type": question_type, "answer_type": answer_type,
        "multiple_choice_answer": humans[0],
        "answers": [{"answer": h, "answer_confidence": "yes", "answer_id": i + 1} for i, h in enumerate(humans)],
    }


ANNOTATIONS = [
    _ann(1, ["yes"] * 9 + ["no"], "yes/no", "is there"),
    _ann(2, ["2"] * 2 + ["3"] * 8, "number", "how many"),
    _ann(3, ["red"] * 10, "other"),
]


def test_score_overall_and_per_type() -> None:
    r = score_vqav2({1: "Yes", 2: "two", 3: "blue"}, ANNOTATIONS)
    # per question: 1.0, 0.6, 0.0 -> overall 100 * 1.6 / 3
    assert r["overall"] == pytest.approx(160 / 3)
    assert r["per_answer_type"] == pytest.approx({"yes/no": 100.0, "number": 60.0, "other": 0.0})
    assert r["per_question_type"]["how many"] == pytest.approx(60.0)
    assert r["n"] == 3
    with pytest.raises(ValueError, match="no result for 1 question"):
        score_vqav2({1: "yes", 2: "2"}, ANNOTATIONS)
    with pytest.raises(ValueError, match="not in the annotations"):
        score_vqav2({1: "yes", 2: "2", 3: "red", 4: "x"}, ANNOTATIONS)


def test_paper_profile_postprocesses_raw_outputs() -> None:
    raw = {1: "Yes, there is one. Question: is", 2: "2###", 3: "red</s>"}
    # official: q1 normalizes to "yes there is 1 question: is" -> 0; "#" is not official
    # punctuation so "2###" stays -> 0; "red</s>" != "red" (unanimous, exact match) -> 0
    assert score_vqav2(raw, ANNOTATIONS)["overall"] == 0.0
    # paper: "Yes" (1.0), "2" (2 of 10 -> 0.6), "red" (1.0) -> 100 * 2.6 / 3
    assert score_vqav2(raw, ANNOTATIONS, profile="paper")["overall"] == pytest.approx(260 / 3)


def test_files(tmp_path) -> None:
    q = tmp_path / "q.json"
    a = tmp_path / "a.json"
    q.write_text(json.dumps({"questions": [{"image_id": 1, "question": "?", "question_id": i} for i in (1, 2, 3)]}))
    a.write_text(json.dumps({"annotations": ANNOTATIONS}))
    res = tmp_path / "res.json"
    write_vqav2_results(res, [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "3"},
                              {"question_id": 3, "answer": "red"}])
    assert read_vqav2_results(res) == {1: "yes", 2: "3", 3: "red"}
    # 1.0, 8 of 10 -> 1.0, 1.0
    assert score_vqav2_files(res, q, a)["overall"] == pytest.approx(100.0)
    write_vqav2_results(res, [{"question_id": 1, "answer": "yes"}])
    with pytest.raises(ValueError, match=r"res\.json: no result for 2 question"):
        score_vqav2_files(res, q, a)
    res.write_text("[{")
    with pytest.raises(ValueError, match=r"res\.json: not valid JSON"):
        read_vqav2_results(res)
