"""POPE scoring, mirroring LLaVA's ``llava/eval/eval_pope.py`` (the de-facto official POPE scorer).

Annotations: ``coco_pope_<split>.json`` (JSON lines ``{"question_id", "image", "text", "label"}``,
label "yes"/"no"; question ids restart at 1 in every split). Answers: LLaVA-style JSON lines
``{"question_id", "text", ...}``; when one answers file covers several splits, every line also
carries ``"category": <split>`` (as in LLaVA's ``llava_pope_test.jsonl``).

Unlike LLaVA (which zips a split's answers with the labels in file order), answers are matched to
questions by ``question_id``; a question without an answer is an error.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmln.eval.profiles import check_profile
from mmln.base.io import write_text

_SPLIT_RE = re.compile(r"^(?:.*_)?pope_(?P<split>[A-Za-z0-9-]+)\.jsonl?$")


def parse_pope_answer(text: str) -> str:
    """Map an answer to "yes" or "no" exactly as ``eval_pope.py``.

    Keep the text before the first ".", drop commas, split on single spaces; any word exactly
    "No", "no" or "not" means no, everything else yes.

    Quirks kept on purpose: "NO", "No!", "Not sure" and "" are yes; "no." and "No, it is not" are no.
    """
    text = text.split(".", 1)[0].replace(",", "")
    words = text.split(" ")
    return "no" if any(w in ("No", "no", "not") for w in words) else "yes"


def pope_metrics(preds: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """accuracy, precision, recall, f1 (positive = "yes") and yes_ratio, as fractions in [0, 1].

    ``preds`` are parsed answers ("yes"/"no"). Where LLaVA divides by zero (a model that never
    says yes, or a split without positives), precision / recall / f1 are defined as 0.
    Also returns the counts tp, fp, tn, fn and n.
    """
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no questions to score")
    pairs = list(zip(preds, labels))
    tp = sum(p == "yes" and g == "yes" for p, g in pairs)
    fp = sum(p == "yes" and g == "no" for p, g in pairs)
    tn = sum(p == "no" and g == "no" for p, g in pairs)
    fn = sum(p == "no" and g == "yes" for p, g in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(pairs)
    return {
        "accuracy": (tp + tn) / n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": n,
    }


def split_name(path: str | os.PathLike[str]) -> str:
    """The split named by an annotation file: ``coco_pope_random.json`` -> ``random``."""
    match = _SPLIT_RE.match(Path(path).name)
    if not match:
        raise ValueError(f"{path}: cannot tell the split from the file name (expected coco_pope_<split>.json)")
    return match["split"]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON line ({e.msg})") from None
            if not isinstance(row, dict) or "question_id" not in row:
                raise ValueError(f"{path}:{number}: expected a JSON object with a question_id")
            rows.append(row)
    return rows


def read_pope_annotations(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read an official ``coco_pope_<split>.json``; checks labels and unique question ids."""
    path = Path(path)
    rows = _read_jsonl(path)
    seen: set[Any] = set()
    for row in rows:
        if str(row.get("label", "")).lower() not in ("yes", "no"):
            raise ValueError(
                f"{path}: question_id {row['question_id']}: label must be yes or no, got {row.get('label')!r}"
            )
        if row["question_id"] in seen:
            raise ValueError(f"{path}: duplicate question_id {row['question_id']}")
        seen.add(row["question_id"])
    if not rows:
        raise ValueError(f"{path}: no questions")
    return rows


def read_pope_answers(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read LLaVA-style answer JSON lines (``question_id``, ``text``, optional ``category``)."""
    path = Path(path)
    rows = _read_jsonl(path)
    for row in rows:
        if not isinstance(row.get("text"), str):
            raise ValueError(f"{path}: question_id {row['question_id']}: answer has no 'text' string")
    return rows


def score_pope(
    answers: Sequence[Mapping[str, Any]],
    annotations: Mapping[str, Sequence[Mapping[str, Any]]],
    profile: str = "official",
    answers_name: str = "answers",
) -> dict[str, dict[str, float]]:
    """Per split: ``pope_metrics`` of the parsed answers against the labels.

    ``annotations`` maps split -> annotation rows. Answers are matched by (category, question_id)
    when they carry a ``category``, else by question_id alone (then only one split may be scored,
    because question ids repeat across splits). Both profiles score the same way.
    """
    check_profile(profile)
    with_cat: dict[Any, Mapping[str, Any]] = {}  # (category, question_id) -> answer
    without: dict[Any, Mapping[str, Any]] = {}  # question_id -> answer
    for a in answers:
        index = with_cat if "category" in a else without
        key = (a["category"], a["question_id"]) if "category" in a else a["question_id"]
        if key in index:
            raise ValueError(f"{answers_name}: two answers for question_id {a['question_id']}")
        index[key] = a
    if without and len(annotations) > 1:
        raise ValueError(
            f"{answers_name}: answers without a 'category' field cannot be matched to several splits "
            f"({', '.join(annotations)}) because question ids repeat across splits; score one split "
            "per answers file or add \"category\": <split> to every answer"
        )
    out = {}
    for split, rows in annotations.items():
        preds, labels = [], []
        for row in rows:
            qid = row["question_id"]
            answer = with_cat.get((split, qid)) or without.get(qid)
            if answer is None:
                raise ValueError(f"{answers_name}: no answer for question_id {qid} of split '{split}'")
            preds.append(parse_pope_answer(answer["text"]))
            labels.append(str(row["label"]).lower())
        out[split] = pope_metrics(preds, labels)
    return out


def score_pope_files(
    answers_path: str | os.PathLike[str],
    annotation_paths: Sequence[str | os.PathLike[str]],
    profile: str = "official",
) -> dict[str, dict[str, float]]:
    """``score_pope`` of an answers file against official annotation files (split from file name)."""
    annotations: dict[str, list[dict[str, Any]]] = {}
    for path in annotation_paths:
        split = split_name(path)
        if split in annotations:
            raise ValueError(f"{path}: split '{split}' given twice")
        annotations[split] = read_pope_annotations(path)
    return score_pope(read_pope_answers(answers_path), annotations, profile, answers_name=str(answers_path))


def write_pope_answers(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write LLaVA-style answer JSON lines atomically; each row needs ``question_id`` and ``text``
    (add ``category`` = split when one file holds several splits); other keys are kept."""
    path = Path(path)
    lines = []
    for row in rows:
        if "question_id" not in row or not isinstance(row.get("text"), str):
            raise ValueError(f"POPE answer row needs question_id and a text string: {dict(row)!r}")
        lines.append(json.dumps(dict(row), ensure_ascii=False))
    return write_text(path, "".join(line + "\n" for line in lines))
