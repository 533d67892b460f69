"""Per-item results of an evaluation, read back from its official answer files (for paired tests).

Every Table-1 column is a ratio of two means over the benchmark's items, `mean(num) / mean(den)`,
so a bootstrap can resample the items and recompute the column exactly as the scorer does:

- MME perception / cognition: an item is one image (its two questions: acc+ needs both). With
  `right` of its 2 answers correct, N images counted and n_t images in its subtask,
  num = N x 100 x (right / 2 + [right == 2]) / n_t, den = 1; the mean over the N images is the sum
  of the subtask scores, 100 x acc + 100 x acc+. Subtasks the profile leaves out are left out.
- POPE, per split: an item is one question. Accuracy: num = 100 x [correct], den = 1. F1 =
  2TP / (2TP + FP + FN): num = 100 x 2 x [tp], den = 2 x [tp] + [fp] + [fn].
- VQAv2: an item is one question, num = 100 x its official soft accuracy, den = 1.
- COCO / Flickr30k: an item is one image, num = 100 x its CIDEr-D with the document frequencies of
  all evaluated images' references (pycocoevalcap's per-image scores, whose mean is the corpus
  score), den = 1.

The answers and ground-truth paths come from the evaluation's `scores.json` (`inputs`, written by
`mmln.evaluate`); the values are in the units `mmln.eval.benchmarks.table_metrics` logs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mmln.eval import caption, mme, pope, vqav2


@dataclass
class Items:
    """One column's per-item terms: the column = `num.mean() / den.mean()`."""

    ids: list
    num: np.ndarray
    den: np.ndarray

    def value(self) -> float:
        return ratio(self.num, self.den)

    def aligned(self, ids: list) -> "Items":
        """The same items in the order of `ids` (which must be exactly this one's items)."""
        where = {k: i for i, k in enumerate(self.ids)}
        if len(ids) != len(self.ids) or any(k not in where for k in ids):
            raise ValueError(f"the two evaluations cover different items ({len(self.ids)} vs {len(ids)}): "
                             "evaluate both on the same questions (same eval.limit and benchmark files)")
        order = np.array([where[k] for k in ids], dtype=int)
        return Items(list(ids), self.num[order], self.den[order])


def ratio(num: np.ndarray, den: np.ndarray) -> float:
    """mean(num) / mean(den)."""
    return float(share(np.sum(num), np.sum(den)))


def share(num: Any, den: Any) -> Any:
    """num / den elementwise, 0 where den is 0 (POPE's F1 with no tp, fp or fn, as its scorer)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def _items(ids: list, num, den=None) -> Items:
    num = np.asarray(num, dtype=float)
    return Items(list(ids), num, np.ones_like(num) if den is None else np.asarray(den, dtype=float))


def mme_items(answers_dir: Path, profile: str) -> dict[str, Items]:
    answers = mme.read_mme_dir(answers_dir)
    excluded = set(mme.PAPER_EXCLUDED) if profile == "paper" else set()
    out = {}
    for group, names in (("perception", mme.PERCEPTION), ("cognition", mme.COGNITION)):
        rows = []  # (subtask, pair index, image, right)
        for name in names:
            if name in answers and name not in excluded:
                lines = answers[name]
                for k in range(0, len(lines), 2):
                    right = sum(mme.parse_mme_answer(x.response) == x.gt.lower() for x in lines[k:k + 2])
                    rows.append((name, k // 2, lines[k].image, right, len(lines) // 2))
        if rows:
            n = len(rows)
            out[f"eval/mme_{group}"] = _items([r[:3] for r in rows],
                                              [n * 100 * (r[3] / 2 + (r[3] == 2)) / r[4] for r in rows])
    return out


def pope_items(answers_dir: Path, pope_files: list[str]) -> dict[str, Items]:
    answers = {(a.get("category"), a["question_id"]): a for a in pope.read_pope_answers(answers_dir / "answers.jsonl")}
    out = {}
    for path in pope_files:
        split = pope.split_name(path)
        rows = []
        for ann in pope.read_pope_annotations(path):
            a = answers.get((split, ann["question_id"])) or answers.get((None, ann["question_id"]))
            if a is not None:  # eval.limit: only the first questions were answered
                rows.append((ann["question_id"], pope.parse_pope_answer(a["text"]), str(ann["label"]).lower()))
        if not rows:
            continue
        ids = [r[0] for r in rows]
        tp = np.array([p == "yes" and g == "yes" for _, p, g in rows], dtype=float)
        fp = np.array([p == "yes" and g == "no" for _, p, g in rows], dtype=float)
        fn = np.array([p == "no" and g == "yes" for _, p, g in rows], dtype=float)
        out[f"eval/pope_{split}_accuracy"] = _items(ids, [100.0 * (p == g) for _, p, g in rows])
        out[f"eval/pope_{split}_f1"] = _items(ids, 200.0 * tp, 2 * tp + fp + fn)
    return out


def vqav2_items(answers_dir: Path, annotations: str, profile: str) -> dict[str, Items]:
    results = vqav2.read_vqav2_results(answers_dir / "results.json")
    ids, acc = [], []
    for ann in vqav2.read_vqav2_annotations(annotations):
        if ann["question_id"] in results:
            answer = results[ann["question_id"]]
            answer = vqav2.paper_postprocess(answer) if profile == "paper" else answer
            ids.append(ann["question_id"])
            acc.append(100 * vqav2.vqa_accuracy(answer, [h["answer"] for h in ann["answers"]]))
    return {"eval/vqav2": _items(ids, acc)} if ids else {}


def caption_items(bench: str, answers_dir: Path, karpathy: str) -> dict[str, Items]:
    results = caption.read_caption_results(answers_dir / "results.json")
    references = {i: r for i, r in caption.read_karpathy_split(karpathy).items() if i in results}
    if not references:
        return {}
    per_image = caption.image_ciders(results, references)
    return {f"eval/{bench}_cider": _items(list(per_image), [100 * v for v in per_image.values()])}


def evaluation_items(scores: Mapping[str, Any]) -> dict[str, Items]:
    """metric -> Items of every benchmark an evaluation's `scores.json` content names in `inputs`
    (an evaluation written before `inputs` existed gives {}). Missing files raise OSError /
    ValueError naming them."""
    profile = scores.get("profile", "official")
    out: dict[str, Items] = {}
    for bench, inp in (scores.get("inputs") or {}).items():
        answers = Path(inp["answers"])
        if bench == "mme":
            out.update(mme_items(answers, profile))
        elif bench == "pope":
            out.update(pope_items(answers, inp["pope_files"]))
        elif bench == "vqav2":
            out.update(vqav2_items(answers, inp["vqav2_annotations"], profile))
        elif bench in ("coco", "flickr30k"):
            out.update(caption_items(bench, answers, inp[f"{bench}_karpathy"]))
    return out
