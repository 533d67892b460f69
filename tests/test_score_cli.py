"""``python -m mmln.score``: JSON and table output, exit code 2 with a one-line error on bad input."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmln.eval.caption import write_caption_results
from mmln.eval.mme import write_mme_answers
from mmln.eval.pope import write_pope_answers
from mmln.eval.vqav2 import write_vqav2_results
from mmln.score import main

REPO = Path(__file__).resolve().parent.parent


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def mme_dir(tmp_path: Path) -> Path:
    rows = []
    for subtask, responses in [("existence", ["Yes", "No"]), ("landmark", ["Yes", "Yes"]), ("code_reasoning", ["y", "no"])]:
        for gt, resp in zip(["Yes", "No"], responses):
            rows.append({"subtask": subtask, "image": "1.jpg", "question": f"{gt}?", "gt": gt, "response": resp})
    write_mme_answers(tmp_path / "mme", rows)
    return tmp_path / "mme"


def test_mme_json_and_table(capsys, mme_dir: Path) -> None:
    code, out, _ = _run(capsys, "--bench", "mme", "--answers", str(mme_dir), "--json")
    assert code == 0
    r = json.loads(out)
    # existence 100+100; landmark 50+0; code_reasoning ("y" is "other") 50+0
    assert r["perception"] == pytest.approx(250)
    assert r["cognition"] == pytest.approx(50)
    assert r["subtasks"] == pytest.approx({"existence": 200, "landmark": 50, "code_reasoning": 50})
    assert r["details"]["code_reasoning"]["acc"] == pytest.approx(0.5)
    assert r["details"]["code_reasoning"]["acc_plus"] == 0
    code, out, _ = _run(capsys, "--bench", "mme", "--answers", str(mme_dir), "--profile", "paper")
    assert code == 0
    assert "not counted" in out and "200.00" in out  # paper perception = existence only


def test_pope_json_and_table(capsys, tmp_path: Path) -> None:
    ann = tmp_path / "coco_pope_random.json"
    ann.write_text("".join(json.dumps({"question_id": q, "image": "x.jpg", "text": "?", "label": lab}) + "\n"
                           for q, lab in [(1, "yes"), (2, "no")]))
    answers = tmp_path / "answers.jsonl"
    write_pope_answers(answers, [{"question_id": 1, "text": "Yes"}, {"question_id": 2, "text": "No"}])
    code, out, _ = _run(capsys, "--bench", "pope", "--answers", str(answers), "--annotations", str(ann), "--json")
    assert code == 0
    r = json.loads(out)
    assert {k: r["random"][k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")} == {
        "accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "yes_ratio": 0.5}
    code, out, _ = _run(capsys, "--bench", "pope", "--answers", str(answers), "--annotations", str(ann))
    assert code == 0 and "fractions in [0, 1]" in out and "random" in out


def test_vqav2_json(capsys, tmp_path: Path) -> None:
    humans = ["2"] * 2 + ["3"] * 8
    (tmp_path / "q.json").write_text(json.dumps({"questions": [{"image_id": 1, "question": "How many?", "question_id": 5}]}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": [{
        "question_id": 5, "image_id": 1, "question_type": "how many", "answer_type": "number",
        "multiple_choice_answer": "3",
        "answers": [{"answer": h, "answer_confidence": "yes", "answer_id": i} for i, h in enumerate(humans)]}]}))
    write_vqav2_results(tmp_path / "r.json", [{"question_id": 5, "answer": "Two"}])
    code, out, _ = _run(capsys, "--bench", "vqav2", "--answers", str(tmp_path / "r.json"), "--questions",
                        str(tmp_path / "q.json"), "--annotations", str(tmp_path / "a.json"), "--json")
    assert code == 0
    r = json.loads(out)
    # "Two" -> "2": 2 of 10 humans -> 0.6
    assert r["overall"] == pytest.approx(60.0)
    assert r["per_answer_type"] == pytest.approx({"number": 60.0})


@pytest.mark.skipif(shutil.which("java") is None, reason="needs java")
def test_caption_json(capsys, tmp_path: Path) -> None:
    images = [{"filepath": "val2014", "filename": f"{i}.jpg", "imgid": i, "cocoid": 100 + i, "split": "test",
               "sentences": [{"raw": raw, "tokens": raw.split()}]} for i, raw in enumerate(["A cat.", "The dog!"])]
    (tmp_path / "k.json").write_text(json.dumps({"images": images}))
    write_caption_results(tmp_path / "r.json", [{"image_id": 100, "caption": "a cat"}, {"image_id": 101, "caption": "dog"}])
    code, out, _ = _run(capsys, "--bench", "caption", "--answers", str(tmp_path / "r.json"),
                        "--karpathy", str(tmp_path / "k.json"), "--split", "test", "--json")
    assert code == 0
    r = json.loads(out)
    assert r["CIDEr"] == pytest.approx(337.169217, abs=1e-4)  # hand value in test_score_caption.py
    assert r["CIDEr_raw"] == pytest.approx(3.37169217, abs=1e-6)


def test_errors_exit_2_with_one_line(capsys, tmp_path: Path, mme_dir: Path) -> None:
    code, out, err = _run(capsys, "--bench", "vqav2", "--answers", str(tmp_path / "missing.json"),
                          "--questions", str(tmp_path / "q.json"), "--annotations", str(tmp_path / "a.json"))
    assert code == 2 and out == ""
    assert "missing.json" in err or "q.json" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    (mme_dir / "color.txt").write_text("1.jpg\tq\tYes\n1.jpg\tq\tNo\tno\n")
    code, _, err = _run(capsys, "--bench", "mme", "--answers", str(mme_dir))
    assert code == 2
    assert "color.txt:1: expected 4 tab-separated fields" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "--bench", "pope", "--answers", "x.jsonl")
    assert code == 2 and "--annotations" in err
    code, _, err = _run(capsys, "--bench", "nope", "--answers", "x")  # usage errors too
    assert code == 2 and "invalid choice: 'nope'" in err and len(err.strip().splitlines()) == 1


def test_missing_java_exits_2(capsys, tmp_path: Path, monkeypatch) -> None:
    from mmln.eval import caption

    monkeypatch.setattr(caption.shutil, "which", lambda name: None)
    (tmp_path / "k.json").write_text(json.dumps({"images": [
        {"filename": "a.jpg", "imgid": 0, "split": "test", "sentences": [{"raw": "a", "tokens": ["a"]}]}]}))
    write_caption_results(tmp_path / "r.json", [{"image_id": 0, "caption": "a"}])
    code, _, err = _run(capsys, "--bench", "caption", "--answers", str(tmp_path / "r.json"), "--karpathy", str(tmp_path / "k.json"))
    assert code == 2 and "Java" in err and "openjdk-17-jre-headless" in err


def test_module_entry_point(tmp_path: Path) -> None:
    ann = tmp_path / "coco_pope_adversarial.json"
    ann.write_text("".join(json.dumps({"question_id": q, "image": "x.jpg", "text": "?", "label": lab}) + "\n"
                           for q, lab in [(1, "yes"), (2, "no"), (3, "no")]))
    answers = tmp_path / "a.jsonl"
    write_pope_answers(answers, [{"question_id": 1, "text": "No"}, {"question_id": 2, "text": "No"},
                                 {"question_id": 3, "text": "No"}])
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "mmln.score", "--bench", "pope", "--answers", str(answers), "--annotations", str(ann), "--json"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)["adversarial"]
    # never says yes: accuracy 2/3, precision/recall/f1 0, yes_ratio 0
    assert r["accuracy"] == pytest.approx(2 / 3)
    assert (r["precision"], r["recall"], r["f1"], r["yes_ratio"]) == (0.0, 0.0, 0.0, 0.0)
