"""MME scorer: parsing quirks of the official calculation.py, hand-computed scores, file format."""
from __future__ import annotations

import pytest

from mmln.eval.mme import (
    MMELine,
    parse_mme_answer,
    read_mme_answers,
    read_mme_dir,
    score_mme,
    score_mme_dir,
    score_mme_subtask,
    write_mme_answers,
)


@pytest.mark.parametrize(
    "response, expected",
    [
        ("yes", "yes"),
        ("no", "no"),
        ("Yes", "yes"),  # lower-cased first
        ("NO", "no"),
        ("y", "other"),  # single letters are not answers
        ("n", "other"),
        ("Yes, there is", "yes"),  # "yes," -> "yes" in the first 4 characters
        ("no.", "no"),
        ("maybe", "other"),
        ("nope", "no"),  # "no" inside "nope"
        ("know", "no"),  # quirk: "kno" contains "no"
        ("The answer is yes.", "other"),  # "the " has neither
        ("no, yes", "no"),  # "no, " has no "yes" -> "no"
        ("yes, no", "yes"),  # "yes" is looked for first
        (" yes", "yes"),
        ("", "other"),
    ],
)
def test_parse_follows_official_rule(response: str, expected: str) -> None:
    assert parse_mme_answer(response) == expected


def _lines(*pairs: tuple[str, str]) -> list[MMELine]:
    # consecutive (gt, response) pairs; two per image
    return [MMELine(f"img{i // 2}.jpg", f"q{i}", gt, resp) for i, (gt, resp) in enumerate(pairs)]


def test_subtask_score_by_hand() -> None:
    lines = _lines(
        ("Yes", "Yes"), ("No", "No"),  # image 0: both right
        ("Yes", "yes"), ("No", "yes"),  # image 1: one right
        ("Yes", "maybe"), ("No", "n"),  # image 2: two "other" answers, both wrong
    )
    r = score_mme_subtask(lines)
    # acc = 3 right / 6 = 0.5; acc+ = 1 image / 3 = 1/3; score = 50 + 33.33.. = 83.33..
    assert r["acc"] == pytest.approx(0.5)
    assert r["acc_plus"] == pytest.approx(1 / 3)
    assert r["score"] == pytest.approx(50 + 100 / 3)
    assert (r["n_images"], r["n_questions"], r["n_other"]) == (3, 6, 2)


def test_subtask_errors() -> None:
    with pytest.raises(ValueError, match="odd"):
        score_mme_subtask(_lines(("Yes", "yes"), ("No", "no"), ("Yes", "yes")))
    with pytest.raises(ValueError, match="yes or no"):
        score_mme_subtask(_lines(("Yes", "yes"), ("Maybe", "no")))


def test_totals_official_and_paper_profiles() -> None:
    perfect = _lines(("Yes", "yes"), ("No", "no"))  # 200
    half = _lines(("Yes", "yes"), ("No", "yes"))  # acc 0.5, acc+ 0 -> 50
    answers = {"existence": perfect, "landmark": half, "artwork": perfect, "code_reasoning": half}
    official = score_mme(answers)
    assert official["perception"] == pytest.approx(200 + 50 + 200)
    assert official["cognition"] == pytest.approx(50)
    assert official["subtasks"] == pytest.approx({"existence": 200, "landmark": 50, "artwork": 200, "code_reasoning": 50})
    paper = score_mme(answers, profile="paper")
    assert paper["perception"] == pytest.approx(200)  # landmark and artwork left out
    assert paper["cognition"] == pytest.approx(50)
    assert set(paper["subtasks"]) == {"existence", "code_reasoning"}
    assert paper["details"]["landmark"]["counted"] is False
    assert paper["details"]["landmark"]["acc"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="profile"):
        score_mme(answers, profile="nope")
    with pytest.raises(ValueError, match="unknown MME subtask"):
        score_mme({"existance": perfect})


def test_write_then_read_round_trip(tmp_path) -> None:
    rows = [
        {"subtask": "OCR", "image": "a.jpg", "question": "Is it A? Please answer yes or no.", "gt": "Yes", "response": "Yes\tit is\nreally"},
        {"subtask": "OCR", "image": "a.jpg", "question": "Is it B? Please answer yes or no.", "gt": "No", "response": "No"},
        {"subtask": "count", "image": "b.jpg", "question": "Two?", "gt": "Yes", "response": "no"},
        {"subtask": "count", "image": "b.jpg", "question": "Three?", "gt": "No", "response": "no"},
    ]
    written = write_mme_answers(tmp_path, rows)
    assert sorted(p.name for p in written) == ["OCR.txt", "count.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OCR.txt", "count.txt"]  # no temp files left
    assert (tmp_path / "OCR.txt").read_text().splitlines()[0] == (
        "a.jpg\tIs it A? Please answer yes or no.\tYes\tYes it is really"
    )
    found = read_mme_dir(tmp_path)
    assert set(found) == {"OCR", "count"}
    r = score_mme_dir(tmp_path)
    # OCR: 2/2 right -> 200; count: 1/2 right, acc+ 0 -> 50; both perception
    assert r["perception"] == pytest.approx(250)
    assert r["cognition"] == 0


def test_reader_errors_name_file_and_line(tmp_path) -> None:
    bad = tmp_path / "color.txt"
    bad.write_text("a.jpg\tq1\tYes\tyes\na.jpg\tq2\tNo\n")
    with pytest.raises(ValueError, match=r"color\.txt:2: expected 4 tab-separated fields"):
        read_mme_answers(bad)
    bad.write_text("a.jpg\tq1\tYes\tyes\na.jpg\tq2\tNo\tno\nb.jpg\tq3\tYes\tyes\n")
    with pytest.raises(ValueError, match=r"color\.txt: odd number of lines \(3\)"):
        read_mme_answers(bad)
    bad.write_text("a.jpg\tq1\tYes\tyes\nb.jpg\tq2\tNo\tno\n")
    with pytest.raises(ValueError, match="two images"):
        read_mme_answers(bad)
    bad.write_text("a.jpg\tq1\tperhaps\tyes\na.jpg\tq2\tNo\tno\n")
    with pytest.raises(ValueError, match=r"color\.txt:1: ground truth"):
        read_mme_answers(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no MME answer file"):
        read_mme_dir(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        read_mme_dir(tmp_path / "absent")


def test_crlf_and_trailing_newline_are_tolerated(tmp_path) -> None:
    f = tmp_path / "scene.txt"
    f.write_bytes(b"a.jpg\tq1\tYes\tYes\r\na.jpg\tq2\tNo\tNo\r\n")
    lines = read_mme_answers(f)
    assert [line.response for line in lines] == ["Yes", "No"]
    assert score_mme_subtask(lines)["score"] == pytest.approx(200)
