"""The paper's Table 1 columns: (header, MLflow metric name), in the paper's order.

One list for everything that prints or tabulates benchmark scores (`mmln.evaluate`'s table, the
report's CSV / Markdown tables, the demo's table). The metric names are the ones
`mmln.eval.benchmarks.table_metrics` logs: MME perception / cognition sums, VQAv2 accuracy,
COCO and Flickr30k CIDEr x 100, POPE accuracy and F1 (percent) per split.
"""
from __future__ import annotations

from typing import Iterable

POPE_SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")
POPE_MEASURES: tuple[tuple[str, str], ...] = (("acc", "accuracy"), ("F1", "f1"))
MAIN_COLUMNS: list[tuple[str, str]] = [
    ("MME-P", "eval/mme_perception"), ("MME-C", "eval/mme_cognition"), ("VQAv2", "eval/vqav2"),
    ("COCO", "eval/coco_cider"), ("Flickr30k", "eval/flickr30k_cider"),
]


def pope_columns(splits: Iterable[str] = POPE_SPLITS, measures: Iterable[str] = ("accuracy", "f1")) -> list[tuple[str, str]]:
    """POPE's columns, split by split: header `POPE-<first 3 letters of the split> acc|F1`."""
    wanted = list(measures)
    return [(f"POPE-{s[:3]} {name}", f"eval/pope_{s}_{key}") for s in splits for name, key in POPE_MEASURES
            if key in wanted]


TABLE1_COLUMNS: list[tuple[str, str]] = MAIN_COLUMNS + pope_columns()
