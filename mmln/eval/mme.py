"""MME scoring, mirroring the official ``eval_tool/calculation.py`` of the MME benchmark.

On disk: one ``<subtask>.txt`` per subtask, one line per question,
``image<TAB>question<TAB>gt<TAB>response``. Lines ``2k`` and ``2k+1`` are the two questions of one
image (the official tool pairs by line position, never by image name).

Score of a subtask = 100 * acc + 100 * acc+ (acc+ = fraction of images with both answers right);
perception and cognition are sums of subtask scores. Profile ``paper`` leaves landmark and
artwork out of perception (max 1600 instead of 2000).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from mmln.eval.profiles import check_profile
from mmln.base.io import write_text

PERCEPTION: tuple[str, ...] = (
    "existence", "count", "position", "color", "posters",
    "celebrity", "scene", "landmark", "artwork", "OCR",
)
COGNITION: tuple[str, ...] = (
    "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning",
)
PAPER_EXCLUDED: tuple[str, ...] = ("landmark", "artwork")


class MMELine(NamedTuple):
    """One line of an official MME answer file."""

    image: str
    question: str
    gt: str
    response: str


def parse_mme_answer(response: str) -> str:
    """Map a model response to "yes", "no" or "other" exactly like the official ``parse_pred_ans``.

    Lower-case; exactly "yes"/"no" is taken as is; otherwise the first 4 characters are searched
    for "yes", then for "no"; anything else is "other" (always wrong). Quirks kept on purpose:
    "y"/"n" are "other", "know"/"snow"/"nope"/"none" are "no", "the answer is yes" is "other".
    """
    text = response.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def score_mme_subtask(lines: Sequence[MMELine]) -> dict[str, float]:
    """acc, acc+ and score of one subtask; lines 2k and 2k+1 are one image's pair.

    Returns ``{"acc", "acc_plus", "score", "n_questions", "n_images", "n_other"}`` with acc and
    acc_plus as fractions and score = 100*acc + 100*acc_plus (max 200), as the official tool.
    """
    if not lines:
        raise ValueError("no answer lines")
    if len(lines) % 2:
        raise ValueError(f"odd number of answer lines ({len(lines)}); every image has 2 questions")
    correct = both = other = 0
    for k in range(0, len(lines), 2):
        right = 0
        for line in lines[k : k + 2]:
            gt = line.gt.lower()
            if gt not in ("yes", "no"):
                raise ValueError(f"ground truth must be yes or no, got {line.gt!r}")
            pred = parse_mme_answer(line.response)
            other += pred == "other"
            right += pred == gt
        correct += right
        both += right == 2
    acc, acc_plus = correct / len(lines), both / (len(lines) // 2)
    return {
        "acc": acc,
        "acc_plus": acc_plus,
        "score": 100 * acc + 100 * acc_plus,
        "n_questions": len(lines),
        "n_images": len(lines) // 2,
        "n_other": other,
    }


def score_mme(answers: Mapping[str, Sequence[MMELine]], profile: str = "official") -> dict[str, Any]:
    """Perception / cognition totals over the subtasks present in ``answers``.

    Returns ``{"perception", "cognition", "subtasks": {name: score}, "details": {name: {...}}}``.
    ``subtasks`` holds exactly the subtasks counted in the totals under ``profile``; ``details``
    holds every subtask given (acc, acc_plus, score, counts and whether it was counted).
    Subtask names outside the 14 official ones are an error.
    """
    check_profile(profile)
    known = set(PERCEPTION) | set(COGNITION)
    unknown = sorted(set(answers) - known)
    if unknown:
        raise ValueError(f"unknown MME subtask(s): {', '.join(unknown)}")
    excluded = set(PAPER_EXCLUDED) if profile == "paper" else set()
    out: dict[str, Any] = {"perception": 0.0, "cognition": 0.0, "subtasks": {}, "details": {}}
    for group, names in (("perception", PERCEPTION), ("cognition", COGNITION)):
        for name in names:
            if name not in answers:
                continue
            detail = score_mme_subtask(answers[name])
            counted = name not in excluded
            out["details"][name] = {**detail, "counted": counted}
            if counted:
                out["subtasks"][name] = detail["score"]
                out[group] += detail["score"]
    return out


def read_mme_answers(path: str | os.PathLike[str]) -> list[MMELine]:
    """Read one ``<subtask>.txt``; a line without exactly 4 tab fields or an odd line count is an
    error naming the file and the line (the official tool would crash with a bare ValueError)."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        raw = f.read().split("\n")
    if raw and raw[-1] == "":
        raw.pop()  # the final newline
    lines = []
    for number, text in enumerate(raw, start=1):
        fields = text.rstrip("\r").split("\t")
        if len(fields) != 4:
            raise ValueError(
                f"{path}:{number}: expected 4 tab-separated fields (image, question, gt, response), "
                f"got {len(fields)}"
            )
        if fields[2].lower() not in ("yes", "no"):
            raise ValueError(f"{path}:{number}: ground truth must be Yes or No, got {fields[2]!r}")
        lines.append(MMELine(*fields))
    if not lines:
        raise ValueError(f"{path}: empty answer file")
    if len(lines) % 2:
        raise ValueError(
            f"{path}: odd number of lines ({len(lines)}); lines 2k and 2k+1 must be the two questions "
            "of one image"
        )
    for k in range(0, len(lines), 2):
        if lines[k].image != lines[k + 1].image:
            raise ValueError(
                f"{path}:{k + 1}-{k + 2}: a pair of lines names two images ({lines[k].image!r}, "
                f"{lines[k + 1].image!r}); the two questions of an image must be on adjacent lines"
            )
    return lines


def read_mme_dir(directory: str | os.PathLike[str]) -> dict[str, list[MMELine]]:
    """Read every official ``<subtask>.txt`` present in ``directory`` (other files are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory of MME answer files")
    found = {
        name: read_mme_answers(directory / f"{name}.txt")
        for name in PERCEPTION + COGNITION
        if (directory / f"{name}.txt").is_file()
    }
    if not found:
        raise ValueError(f"{directory}: no MME answer file (<subtask>.txt, e.g. existence.txt) found")
    return found


def score_mme_dir(directory: str | os.PathLike[str], profile: str = "official") -> dict[str, Any]:
    """``score_mme`` of the answer files in ``directory``."""
    return score_mme(read_mme_dir(directory), profile)


def _one_line(text: str) -> str:
    # no strip(): leading spaces change the official parse ("   yes"[:4] has no "yes")
    return " ".join(text.replace("\t", " ").splitlines())


def write_mme_answers(directory: str | os.PathLike[str], rows: Iterable[Mapping[str, str]]) -> list[Path]:
    """Write official answer files ``<directory>/<subtask>.txt`` (atomically, one per subtask).

    Each row is a mapping with ``subtask, image, question, gt, response``, given in the official
    question order (an image's two questions adjacent). Tabs and line breaks in the response are
    turned into spaces so the file stays parseable; the other fields must not contain them.
    Returns the paths written.
    """
    by_task: dict[str, list[str]] = {}
    for row in rows:
        subtask = row["subtask"]
        if subtask not in PERCEPTION + COGNITION:
            raise ValueError(f"unknown MME subtask {subtask!r}")
        fixed = [row["image"], row["question"], row["gt"]]
        if any(c in value for value in fixed for c in "\t\r\n"):
            raise ValueError(f"{subtask}: image/question/gt must not contain tabs or newlines: {fixed!r}")
        by_task.setdefault(subtask, []).append("\t".join([*fixed, _one_line(row["response"])]))
    written = []
    for subtask, lines in by_task.items():
        if len(lines) % 2:
            raise ValueError(f"{subtask}: odd number of rows ({len(lines)}); every image has 2 questions")
        path = Path(directory) / f"{subtask}.txt"
        write_text(path, "\n".join(lines) + "\n")
        written.append(path)
    return written


# ------------------------------------------------------------------ reading the release folder
class MMERow(NamedTuple):
    subtask: str
    image: Path
    question: str
    gt: str  # "Yes" | "No"


def read_mme(root: str | Path) -> list[MMERow]:
    """Read an MME release folder (real or synthetic) into rows in official order: subtasks in
    the order of PERCEPTION + COGNITION, question files sorted by name, lines in file order (Yes, No)."""
    root = Path(root)
    if (root / "MME_Benchmark_release_version").is_dir():
        root = root / "MME_Benchmark_release_version"
    rows: list[MMERow] = []
    for task in PERCEPTION + COGNITION:
        d = root / task
        if not d.is_dir():
            continue
        img_dir, qa_dir = (d / "images", d / "questions_answers_YN") if (d / "images").is_dir() else (d, d)
        for txt in sorted(qa_dir.glob("*.txt")):
            img = next((img_dir / (txt.stem + e) for e in (".jpg", ".png", ".jpeg", ".JPG", ".PNG")
                        if (img_dir / (txt.stem + e)).exists()), None)
            if img is None:
                raise FileNotFoundError(f"MME: no image for {txt}")
            for line in txt.read_text(encoding="utf-8-sig").splitlines():
                if line.strip():
                    q, gt = line.rsplit("\t", 1)
                    rows.append(MMERow(task, img, q.strip(), gt.strip()))
    if not rows:
        raise FileNotFoundError(f"MME: no subtask folders with questions under {root}")
    return rows
