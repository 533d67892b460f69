"""COCO / Flickr30k captioning: CIDEr-D with pycocoevalcap, as the COCO caption evaluation does.

Pipeline (what ``pycocoevalcap.eval.COCOEvalCap`` does for CIDEr): the Stanford PTB tokenizer
(Java, ``-preserveLines -lowerCase``, punctuation tokens dropped) on references and candidates,
then ``pycocoevalcap.cider.cider.Cider`` (n=4, sigma=6: clipped tf-idf n-gram cosine with a
Gaussian length penalty, i.e. CIDEr-D). Document frequencies come from the references of the
evaluated images only, so a single image always scores 0.

References come from a Karpathy split file (``dataset_coco.json`` / ``dataset_flickr30k.json``),
results are ``[{"image_id", "caption"}]`` with image_id = ``cocoid`` when present, else ``imgid``.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmln.eval.profiles import check_profile
from mmln.base.io import read_json, read_results, write_results
from mmln.base.progress import quiet_child_stderr

# Characters the Java tokenizer treats as line ends although Python's wrapper only replaces "\n":
# left in, they shift every later caption onto the wrong image. Replaced by spaces beforehand.
_JAVA_LINE_BREAKS = str.maketrans({c: " " for c in "\r\x0b\x0c\u2028\u2029"})


class JavaNotFoundError(RuntimeError):
    """pycocoevalcap's PTB tokenizer needs a ``java`` executable on PATH."""


def require_java() -> str:
    """Path of ``java``, or a JavaNotFoundError saying how to install it."""
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(
            "captioning scores need Java: pycocoevalcap's PTB tokenizer runs `java`, which is not on "
            "PATH. Install a JRE, e.g. `apt-get install openjdk-17-jre-headless` (Debian/Ubuntu) or "
            "`conda install -c conda-forge openjdk`, then retry."
        )
    return java


def ptb_tokenize(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """pycocoevalcap's ``PTBTokenizer`` on ``{key: [caption, ...]}`` in ONE java call.

    Lower-cases, splits clitics ("isn't" -> "is n't", "dog's" -> "dog 's"), drops the tokens
    ``'' ' `` ` . ? ! , : - -- ... ;``. Brackets survive as "-lrb-"/"-rrb-"/"-lsb-"/"-rsb-"/
    "-lcb-"/"-rcb-" (the wrapper's filter lists "-LRB-" upper-case, but -lowerCase already
    lowered it). Every key of the input is in the output, even with no captions.
    """
    require_java()
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    payload = {
        key: [{"caption": c.translate(_JAVA_LINE_BREAKS)} for c in caps]
        for key, caps in captions.items()
        if caps
    }
    out: dict[Hashable, list[str]] = {key: [] for key in captions}
    if payload:
        with quiet_child_stderr("PTBTokenizer tokenized"):
            out.update(PTBTokenizer().tokenize(payload))
    for key, caps in captions.items():
        if len(out[key]) != len(caps):
            raise RuntimeError(f"PTB tokenizer returned {len(out[key])} captions for {key!r}, expected {len(caps)}")
    return out


def cider_d(
    references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str]
) -> tuple[float, list[float]]:
    """pycocoevalcap ``Cider().compute_score`` on already tokenized text (space-separated tokens).

    Returns (corpus CIDEr-D, per-image scores in the order of ``candidates``), unscaled
    (a perfect caption is around 10 in theory; paper tables print 100 x this).
    """
    from pycocoevalcap.cider.cider import Cider

    if set(references) != set(candidates):
        raise ValueError("references and candidates must cover the same images")
    if not candidates:
        raise ValueError("no images to score")
    keys = list(candidates)
    score, scores = Cider(n=4, sigma=6.0).compute_score(
        {k: list(references[k]) for k in keys}, {k: [candidates[k]] for k in keys}
    )
    return float(score), [float(s) for s in scores]


def score_captions(
    results: Mapping[Any, str],
    references: Mapping[Any, Sequence[str]],
    profile: str = "official",
) -> dict[str, Any]:
    """CIDEr of ``results`` (image_id -> caption) against ``references`` (image_id -> raw captions).

    Every referenced image needs a result (error otherwise); results for other images are ignored.
    Both profiles score the same way. Returns ``{"CIDEr": 100 x raw, "CIDEr_raw", "n_images"}``.
    """
    check_profile(profile)
    missing = [i for i in references if i not in results]
    if missing:
        raise ValueError(f"no caption for {len(missing)} image(s) of the split, e.g. image_id {missing[0]}")
    if not references:
        raise ValueError("no reference images")
    for image_id, refs in references.items():
        if not refs:
            raise ValueError(f"image_id {image_id} has no reference captions")
    raw, _ = _cider(results, references)
    return {"CIDEr": 100 * raw, "CIDEr_raw": raw, "n_images": len(references)}


def image_ciders(results: Mapping[Any, str], references: Mapping[Any, Sequence[str]]) -> dict[Any, float]:
    """image_id -> that image's CIDEr-D (unscaled) in the corpus of ``references`` (document
    frequencies from all of them, as ``score_captions``); their mean is its ``CIDEr_raw``. The
    per-image scores a paired bootstrap resamples."""
    return dict(zip(references, _cider(results, references)[1]))


def _cider(results: Mapping[Any, str], references: Mapping[Any, Sequence[str]]) -> tuple[float, list[float]]:
    tokens = ptb_tokenize(
        {**{("ref", i): list(refs) for i, refs in references.items()}, **{("res", i): [results[i]] for i in references}}
    )
    return cider_d(
        {i: tokens[("ref", i)] for i in references},
        {i: tokens[("res", i)][0] for i in references},
    )


def karpathy_image_id(image: Mapping[str, Any]) -> int:
    """``cocoid`` when present (COCO), else ``imgid`` (Flickr30k)."""
    return image["cocoid"] if "cocoid" in image else image["imgid"]


def read_karpathy_split(path: str | os.PathLike[str], split: str = "test") -> dict[int, list[str]]:
    """image_id -> raw reference sentences of the images of ``split`` in a Karpathy split file."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: expected a Karpathy split file with an 'images' list")
    refs: dict[int, list[str]] = {}
    for image in data["images"]:
        if image.get("split") != split:
            continue
        if "cocoid" not in image and "imgid" not in image:
            raise ValueError(f"{path}: image {image.get('filename')!r} has neither cocoid nor imgid")
        try:
            refs[karpathy_image_id(image)] = [s["raw"] for s in image["sentences"]]
        except (KeyError, TypeError):
            raise ValueError(
                f"{path}: image {image.get('filename')!r}: sentences must be a list of {{'raw': ...}}"
            ) from None
    if not refs:
        splits = sorted({str(i.get("split")) for i in data["images"]})
        raise ValueError(f"{path}: no image in split {split!r} (splits present: {', '.join(splits)})")
    return refs


def read_caption_results(path: str | os.PathLike[str]) -> dict[Any, str]:
    """Results file ``[{"image_id", "caption"}]`` -> image_id -> caption (one per image)."""
    return read_results(path, "image_id", "caption", "captions")


def score_caption_files(
    results_path: str | os.PathLike[str],
    karpathy_path: str | os.PathLike[str],
    split: str = "test",
    profile: str = "official",
) -> dict[str, Any]:
    """``score_captions`` of a results file against a Karpathy split."""
    references = read_karpathy_split(karpathy_path, split)
    results = read_caption_results(results_path)
    missing = [i for i in references if i not in results]
    if missing:
        raise ValueError(
            f"{results_path}: no caption for {len(missing)} of the {len(references)} images of split "
            f"{split!r}, e.g. image_id {missing[0]}"
        )
    return score_captions(results, references, profile)


def write_caption_results(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write a results file ``[{"image_id": int, "caption": str}]`` atomically."""
    return write_results(path, rows, "image_id", "caption")
