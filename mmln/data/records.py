"""Readers for LLaVA-format JSON files, instruct data-type labelling, seeded subsets and splits.

Both stages use one record format (LLaVA's): a JSON array of `{"id", "image", "conversations"}`.
- LLaVA-CC3M-Pretrain-595K: `chat.json` + a flat image folder (`images/`, unzipped images.zip).
- LLaVA-Instruct: `llava_instruct_80k.json`, `llava_instruct_150k.json` or the per-type files
  `conversation_58k.json`, `detail_23k.json`, `complex_reasoning_77k.json`, any mix; images are
  COCO train2017.

Each file is read once with `json.load` and kept as the list of raw records; nothing is
validated or decoded here (the Dataset does that lazily per sample, so one bad record costs
one sample, not the run).

Data type of an instruct record (records carry no type field and an image id occurs in several
types): a record read from a per-type file has that file's type; any other record is joined
against the per-type files on (id, conversation text with `<image>` and surrounding whitespace
removed). When they are absent (or a record is in none of them) a heuristic decides, and a
warning says so: several human turns -> conversation; one turn asking generically to describe
the image (`DETAIL_PROMPT`) -> detail; else -> complex_reasoning.
"""
from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from mmln.base.constants import CONVERSATION_TYPES

log = logging.getLogger("mmln.data")

TYPES = CONVERSATION_TYPES
TYPE_FILES = {
    "conversation": "conversation_58k.json",
    "detail": "detail_23k.json",
    "complex_reasoning": "complex_reasoning_77k.json",
}
# Generic "describe the whole image" requests (LLaVA's detail prompts and their paraphrases).
DETAIL_PROMPT = re.compile(
    r"\b(describ|descript|detail|elaborat|depict|portray|narrat|characteri[sz]|rundown|analy[sz]|illustrat|"
    r"walk through|break down|various aspects|what do you see|what is happening|what's happening|"
    r"what is going on|what's going on|what is this (photo|picture|image) about|main features|key elements|"
    r"visual content|explain the (image|picture|scene|photo))",
    re.IGNORECASE,
)


class DataError(ValueError):
    """A data-set level problem (missing or unreadable file, nothing selected); the message says what."""


@dataclass(slots=True)
class Record:
    """One raw LLaVA record and where it came from; `raw` is the JSON value as loaded."""

    raw: Any
    file: str
    image_folder: str
    type: Optional[str] = None

    @property
    def id(self) -> str:
        rid = self.raw.get("id") if isinstance(self.raw, dict) else None
        return str(rid) if rid is not None else "?"


def read_json_array(path: str | Path) -> list[Any]:
    """One LLaVA JSON file (a JSON array, read with one json.load)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{p} is not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise DataError(f"{p} must hold a JSON array of records, got {type(data).__name__}")
    return data


def default_image_folder(first_file: str | Path) -> Path:
    """`<dir of the file>/images` if it exists (CC3M layout), else the file's own dir."""
    d = Path(first_file).parent
    return d / "images" if (d / "images").is_dir() else d


def read_records(files: Sequence[str | Path], image_folder: str | Path | None = None) -> list[Record]:
    """Every record of `files`, in order; `image_folder` defaults to `default_image_folder`."""
    if not files:
        raise DataError("no data files given (set data.train.files)")
    folder = str(image_folder) if image_folder is not None else str(default_image_folder(files[0]))
    out: list[Record] = []
    for f in files:
        kind = file_type(f)
        out += [Record(r, str(f), folder, kind) for r in read_json_array(f)]
    return out


def file_type(path: str | Path) -> Optional[str]:
    """The data type a per-type file holds (by its LLaVA name), else None."""
    name = Path(path).name
    return next((t for t, n in TYPE_FILES.items() if n == name), None)


def _join_key(raw: Any) -> Optional[tuple[str, str]]:
    try:
        text = "\x1f".join(t["value"].replace("<image>", "").strip() for t in raw["conversations"])
        return str(raw["id"]), text
    except (TypeError, KeyError, AttributeError):
        return None


def heuristic_type(raw: Any) -> str:
    """Multi-turn -> conversation; single turn asking to describe the image -> detail; else
    complex_reasoning (LLaVA-Instruct's three GPT-4 prompt families, one file per family)."""
    try:
        human = [t["value"] for t in raw["conversations"] if t.get("from") == "human"]
    except (TypeError, KeyError, AttributeError):
        return "complex_reasoning"
    if len(human) > 1:
        return "conversation"
    question = human[0].replace("<image>", "").strip() if human else ""
    return "detail" if DETAIL_PROMPT.search(question) else "complex_reasoning"


def label_types(records: list[Record], type_dir: str | Path | None = None) -> dict[str, int]:
    """Set `Record.type` for every record (see the module docstring); returns how many records
    each method labelled: {"file": ..., "join": ..., "heuristic": ...}."""
    stats = {"file": 0, "join": 0, "heuristic": 0}
    todo = [r for r in records if r.type is None]
    stats["file"] = len(records) - len(todo)
    if not todo:
        return stats
    tdir = Path(type_dir) if type_dir is not None else Path(todo[0].file).parent
    index: dict[tuple[str, str], str] = {}
    found = []
    for kind, name in TYPE_FILES.items():
        p = tdir / name
        if p.is_file():
            found.append(name)
            for raw in read_json_array(p):
                key = _join_key(raw)
                if key is not None:
                    index.setdefault(key, kind)
    heur = 0
    for r in todo:
        key = _join_key(r.raw)
        kind = index.get(key) if key is not None else None
        if kind is None:
            kind, heur = heuristic_type(r.raw), heur + 1
        r.type = kind
    stats["join"], stats["heuristic"] = len(todo) - heur, heur
    if heur:
        missing = [n for n in TYPE_FILES.values() if n not in found]
        why = f"per-type files missing in {tdir}: {', '.join(missing)}" if missing else "not found in the per-type files"
        log.warning(
            "data: %d of %d records typed by heuristic (%s): multi-turn -> conversation; single-turn "
            "describe-the-image request -> detail; else complex_reasoning",
            heur, len(records), why,
        )
    return stats


def select(
    records: list[Record], *, types: Iterable[str] = (), limit: Optional[int] = None, seed: int = 0,
    type_dir: str | Path | None = None,
) -> list[Record]:
    """Keep records of `types` (labelled on demand; [] = all), then a seeded random `limit`
    of them (original order kept)."""
    types = list(types)
    bad = [t for t in types if t not in TYPES]
    if bad:
        raise DataError(f"unknown data type(s) {bad}; one of {', '.join(TYPES)}")
    if types:
        label_types(records, type_dir)
        kept = [r for r in records if r.type in types]
        if not kept:
            hint = " (llava_instruct_80k.json holds no detail records: add detail_23k.json)" if "detail" in types else ""
            raise DataError(f"no records of type {types} in {sorted({r.file for r in records})}{hint}")
        records = kept
    if limit is not None and limit < len(records):
        if limit < 1:
            raise DataError(f"limit={limit} must be >= 1")
        keep = sorted(random.Random(seed).sample(range(len(records)), limit))
        records = [records[i] for i in keep]
    return records


def split_off(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(train, val): a seeded `fraction` of `records` (at least one) held out for validation."""
    if not 0 < fraction < 1:
        raise DataError(f"data.val_fraction={fraction} must be in (0, 1)")
    n_val = max(1, round(len(records) * fraction))
    if n_val >= len(records):
        raise DataError(f"data.val_fraction={fraction} leaves no training records out of {len(records)}")
    held = set(random.Random(seed + 1).sample(range(len(records)), n_val))
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def load_split(split: Any) -> list[Record]:
    """Records of one `data.<split>` config (files, image_folder, types, type_files, limit, seed)."""
    records = read_records(list(split.files), split.image_folder)
    return select(records, types=split.types, limit=split.limit, seed=split.seed, type_dir=split.type_files)


def load_train_val(data: Any) -> tuple[list[Record], list[Record]]:
    """`cfg.data` -> (train, val): val from `data.val.files` (image folder defaults to train's),
    else a seeded `data.val_fraction` of train, else empty."""
    train = load_split(data.train)
    if data.val.files:
        val_folder = data.val.image_folder or data.train.image_folder
        val = select(
            read_records(list(data.val.files), val_folder),
            types=data.val.types, limit=data.val.limit, seed=data.val.seed, type_dir=data.val.type_files,
        )
        return train, val
    if data.val_fraction and data.val_fraction > 0:
        return split_off(train, data.val_fraction, data.train.seed)
    return train, []
