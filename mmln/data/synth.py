"""Synthetic data sets in the real on-disk formats (training data and benchmarks), drawn from a tiny shape world.

Every image is a plain background with 1-3 objects (shape x colour x size) in distinct cells of a
3x3 grid, drawn with PIL plus colour jitter and pixel noise. Every caption, question and answer is
derived from the scene that was drawn, so it is true of its image, and the vocabulary is small
enough for a tiny LM to learn in minutes on CPU. Everything is seeded: the same arguments give
byte-identical files. Each item has its own RNG (seed, data set, index), so item ``i`` does not
depend on the other size options. ``scenes.jsonl`` (one ``{"image", "scene"}`` per image, paths
relative to ``--out``) records the ground truth of every drawn image.

Layout written under ``--out`` (sizes = defaults of :func:`synthesize`)::

    cc3m/chat.json, cc3m/images/GCC_train_<9 digits>.jpg           stage 1 (LLaVA-CC3M-Pretrain)
    coco/train2017/<12 digits>.jpg                                   stage 2 images
    llava_instruct/{conversation_58k,detail_23k,complex_reasoning_77k,
                    llava_instruct_150k,llava_instruct_80k}.json     stage 2 (LLaVA-Instruct)
    llava_instruct/short_answer_vqa.json                             LLaVA-1.5-style one-word VQA (demo stage 2)
    mme/MME_Benchmark_release_version/<subtask>/...                  MME release layout
    pope/coco_pope_{random,popular,adversarial}.json                 POPE (JSON lines)
    coco/val2014/COCO_val2014_<12 digits>.jpg                        POPE, VQAv2, Karpathy val/test
    vqav2/v2_OpenEnded_mscoco_val2014_questions.json, vqav2/v2_mscoco_val2014_annotations.json
    coco/train2014/COCO_train2014_<12 digits>.jpg                    Karpathy COCO train split
    karpathy/dataset_coco.json, karpathy/dataset_flickr30k.json, flickr30k/<10 digits>.jpg
    scenes.jsonl                                                     ground truth per image
"""
from __future__ import annotations

import argparse
import io
import json
import math
import random
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmln.constants import SHORT_ANSWER, YES_NO_SUFFIX
from mmln.eval.mme import COGNITION as MME_COGNITION, PERCEPTION as MME_PERCEPTION
from mmln.io import write_bytes, write_json, write_text  # noqa: F401 (write_json: part of this module's API)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35), "green": (30, 165, 60), "blue": (35, 70, 225),
    "yellow": (245, 210, 25), "purple": (145, 55, 185), "orange": (245, 135, 25)}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (242, 242, 242), "gray": (125, 125, 125), "black": (18, 18, 18)}
SHAPES = ("circle", "square", "triangle", "star", "cross")
SIZES = {"small": 0.075, "large": 0.12}  # radius as a fraction of the image side
LABELS = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)
ROWS, COLS = ("top", "middle", "bottom"), ("left", "center", "right")
NUM = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MME_SUBTASKS = MME_PERCEPTION + MME_COGNITION
MME_IMAGES_DIR = {"artwork", "celebrity", "landmark", "posters", "scene"}  # images/ + questions_answers_YN/
YN, SHORT = YES_NO_SUFFIX, SHORT_ANSWER
BRIEF_PROMPTS = (
    "Describe the image concisely.", "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Write a terse but informative summary of the picture.")
DETAIL_PROMPTS = (
    "Describe the following image in detail.", "Provide a detailed description of the given image.",
    "Give an elaborate explanation of the image you see.", "Offer a thorough analysis of the image.",
    "Explain the various aspects of the image before you.",
    "Walk through the important details of the image.",
    "What do you see happening in this image?", "What is going on in this image?")
OCR_WORDS = ("CAT", "DOG", "SUN", "MAP", "BOX", "HAT", "CUP", "PEN", "KEY", "BUS")
FRENCH = {"red": "ROUGE", "green": "VERT", "blue": "BLEU", "yellow": "JAUNE",
          "purple": "VIOLET", "orange": "ORANGE"}
VQA_INFO = {"description": "Synthetic shape-world stand-in for VQA v2.0 (mmln).",
            "url": "http://visualqa.org", "version": "2.0", "year": 2017,
            "contributor": "mmln synth", "date_created": "2017-04-26 17:07:13"}
VQA_LICENSE = {"url": "http://creativecommons.org/licenses/by/4.0/",
               "name": "Creative Commons Attribution 4.0 International License"}


# ------------------------------------------------------------------------------ scene world
@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str  # small | large
    row: int  # 0..2, top to bottom
    col: int  # 0..2, left to right
    x: float  # centre, fraction of the image side
    y: float

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[Obj, ...] = ()
    text: str = ""  # text drawn in the centre (OCR, translation, code subtasks)
    ink: str = ""  # colour name of the text; "" = black/white by background
    box: int = -1  # index of an object outlined by a box (celebrity)
    frame: bool = False  # a border around the picture (posters)

    @property
    def labels(self) -> list[str]:
        return [o.name for o in self.objects]

    def find(self, label: str) -> Obj | None:
        return next((o for o in self.objects if o.name == label), None)

    def count(self, shape: str | None = None, color: str | None = None) -> int:
        return sum((shape in (None, o.shape)) and (color in (None, o.color)) for o in self.objects)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        return cls(**{**d, "objects": tuple(Obj(**o) for o in d["objects"])})


def sample_scene(rnd: random.Random, n: int | None = None, *, max_objects: int = 3,
                 shapes: Sequence[str] = SHAPES, background: str | None = None) -> Scene:
    """1..max_objects objects with distinct (colour, shape) in distinct grid cells."""
    n = rnd.randint(1, max_objects) if n is None else n
    labels = rnd.sample([(c, s) for c in COLORS for s in shapes], n)
    objs = []
    for cell, (color, shape) in zip(rnd.sample(range(9), n), labels, strict=True):
        row, col = divmod(cell, 3)
        size = rnd.choice(("small", "large"))
        j = 0.16 - SIZES[size]  # max centre jitter: objects never leave their cell
        objs.append(Obj(shape, color, size, row, col, round((col + 0.5) / 3 + rnd.uniform(-j, j), 4),
                        round((row + 0.5) / 3 + rnd.uniform(-j, j), 4)))
    return Scene(background or rnd.choice(tuple(BACKGROUNDS)), tuple(objs))


@lru_cache(maxsize=32)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=px)


def _jit(rgb: tuple[int, int, int], rng: np.random.Generator, a: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(v + rng.integers(-a, a + 1), 0, 255)) for v in rgb)  # type: ignore[return-value]


def _ink(scene: Scene) -> tuple[int, int, int]:
    return COLORS[scene.ink] if scene.ink else (15, 15, 15) if scene.background == "white" else (240, 240, 240)


def draw(scene: Scene, size: int = 224, rng: np.random.Generator | None = None) -> Image.Image:
    """Render ``scene`` as a ``size`` x ``size`` RGB image (colour jitter + pixel noise from ``rng``)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    img = Image.new("RGB", (size, size), _jit(BACKGROUNDS[scene.background], rng, 6))
    d = ImageDraw.Draw(img)
    line = max(1, size // 45)
    if scene.frame:
        d.rectangle([0, 0, size - 1, size - 1], outline=_ink(scene), width=2 * line)
    for o in scene.objects:
        cx, cy, r, fill = o.x * size, o.y * size, SIZES[o.size] * size, _jit(COLORS[o.color], rng, 12)
        if o.shape == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif o.shape == "square":
            d.rectangle([cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r], fill=fill)
        elif o.shape == "triangle":
            d.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=fill)
        elif o.shape == "star":
            d.polygon([(cx + (r if k % 2 == 0 else 0.45 * r) * math.sin(k * math.pi / 5),
                        cy - (r if k % 2 == 0 else 0.45 * r) * math.cos(k * math.pi / 5))
                       for k in range(10)], fill=fill)
        else:  # cross
            t = 0.36 * r
            d.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
            d.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    if scene.box >= 0:
        o, m = scene.objects[scene.box], (SIZES[scene.objects[scene.box].size] + 0.03) * size
        d.rectangle([o.x * size - m, o.y * size - m, o.x * size + m, o.y * size + m],
                    outline=_ink(scene), width=line)
    if scene.text:
        longest = max(len(t) for t in scene.text.splitlines())
        px = max(6, int(min(0.3 * size, 1.3 * size / max(longest, 1)) * (0.8 if "\n" in scene.text else 1)))
        d.multiline_text((size / 2, size / 2), scene.text, fill=_ink(scene), font=_font(px),
                         anchor="mm", align="center")
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-8, 9, (size, size, 3), dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


# ------------------------------------------------------------------------------ language
def _a(w: str) -> str:
    return ("an " if w[0] in "aeiou" else "a ") + w


def _pl(w: str) -> str:
    return w + ("es" if w.endswith(("ss", "x")) else "s")


def _n(k: int, noun: str) -> str:
    return f"{NUM[k]} {noun if k == 1 else _pl(noun)}"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def where(o: Obj) -> str:
    """Position phrase: 'in the center', 'on the left', 'at the top', 'at the bottom right'..."""
    if (o.row, o.col) == (1, 1):
        return "in the center"
    if o.row == 1:
        return f"on the {COLS[o.col]}"
    return f"at the {ROWS[o.row]}" + ("" if o.col == 1 else f" {COLS[o.col]}")


def _spot(o: Obj) -> str:  # 'left', 'top left', 'center'
    return where(o).split(" ", 2)[2]


def _join(parts: list[str], sep: str = ", ") -> str:
    return parts[0] if len(parts) == 1 else sep.join(parts[:-1]) + " and " + parts[-1]


def _phrase(o: Obj, rnd: random.Random) -> str:
    p = _a(f"{o.size} {o.name}" if rnd.random() < 0.3 else o.name)
    return p + (f" {where(o)}" if rnd.random() < 0.6 else "")


def caption(scene: Scene, rnd: random.Random) -> str:
    """CC3M-style caption: lowercase, space before punctuation ('a red circle and a blue star .')."""
    body = _join([_phrase(o, rnd) for o in rnd.sample(scene.objects, len(scene.objects))], " , ")
    form, bg, n = rnd.randrange(4), scene.background, len(scene.objects)
    if form == 1:
        body = f"{body} on a {bg} background"
    elif form == 2:
        body = f"{rnd.choice(('an illustration of', 'a picture of', 'a drawing of'))} {body}"
    elif form == 3:
        body = f"{_n(n, 'shape')} on a {bg} background : {body}"
    return body + " ."


def sentence(scene: Scene, rnd: random.Random) -> str:
    """A COCO-style reference caption ('A red circle on the left and a blue star.')."""
    return _cap(caption(scene, rnd)[:-2].replace(" , ", ", ").replace(" : ", ": ")) + "."


def absent_label(scene: Scene, rnd: random.Random, similar: float = 0.5) -> str:
    """A label not in the scene; with probability ``similar`` one sharing a shape or colour."""
    absent = [lab for lab in LABELS if lab not in scene.labels]
    near = [lab for lab in absent if any(set(lab.split()) & set(o.name.split()) for o in scene.objects)]
    return rnd.choice(near if near and rnd.random() < similar else absent)


QA = tuple[str, str, str]  # question, full answer, short answer


def _qa_color(s: Scene, rnd: random.Random, o: Obj) -> QA:
    ref = f"the {o.shape}" + (f" {where(o)}" if s.count(shape=o.shape) > 1 else "")
    return f"What color is {ref}?", f"{_cap(ref)} is {o.color}.", o.color


def _qa_shape(s: Scene, rnd: random.Random, o: Obj) -> QA:
    ref = f"the {o.color} object" + (f" {where(o)}" if s.count(color=o.color) > 1 else "")
    return f"What shape is {ref}?", f"{_cap(ref)} is {_a(o.shape)}.", o.shape


def _qa_count(s: Scene, rnd: random.Random, o: Obj) -> QA:
    noun, k = ("object", len(s.objects)) if rnd.random() < 0.5 else (o.shape, s.count(shape=o.shape))
    if rnd.random() < 0.3:  # a shape that may be absent
        noun = rnd.choice(SHAPES)
        k = s.count(shape=noun)
    return (f"How many {_pl(noun)} are there in the image?",
            f"There {'is' if k == 1 else 'are'} {_n(k, noun)} in the image.", str(k))


def _qa_where(s: Scene, rnd: random.Random, o: Obj) -> QA:
    return f"Where is the {o.name} in the image?", f"The {o.name} is {where(o)} of the image.", _spot(o)


def _qa_exist(s: Scene, rnd: random.Random, o: Obj) -> QA:
    q = rnd.choice(("Is there {} in the image?", "Is there {} in this image?", "Does the image contain {}?"))
    if rnd.random() < 0.5:
        return q.format(_a(o.name)), f"Yes, there is {_a(o.name)} {where(o)}.", "yes"
    lab = absent_label(s, rnd)
    return q.format(_a(lab)), f"No, there is no {lab} in the image.", "no"


def _qa_background(s: Scene, rnd: random.Random, o: Obj) -> QA:
    return "What color is the background?", f"The background is {s.background}.", s.background


def _qa_relation(s: Scene, rnd: random.Random, o: Obj) -> QA | None:
    others = [b for b in s.objects if b is not o]
    if not others:
        return None
    b = rnd.choice(others)
    if o.col != b.col and (o.row == b.row or rnd.random() < 0.5):
        asked, true = rnd.choice(("left", "right")), "left" if o.col < b.col else "right"
        q, rel = f"Is the {o.name} to the {asked} of the {b.name}?", f"to the {true} of"
    else:
        asked, true = rnd.choice(("above", "below")), "above" if o.row < b.row else "below"
        q, rel = f"Is the {o.name} {asked} the {b.name}?", true
    yes = asked == true
    return q, f"{'Yes' if yes else 'No'}, the {o.name} is {rel} the {b.name}.", "yes" if yes else "no"


def _yn(yes: bool, question: str, fact: str) -> QA:
    return question, f"{'Yes' if yes else 'No'}, {fact}.", "yes" if yes else "no"


def _asked(true: Any, options: Sequence[Any], rnd: random.Random) -> Any:
    """The true value or (half the time) another one of ``options``."""
    return true if rnd.random() < 0.5 else rnd.choice([x for x in options if x != true])


def _qa_background_yn(s: Scene, rnd: random.Random, o: Obj) -> QA:
    q = rnd.choice(("Is the background {}?", "Is the background of this image {}?", "Is the background color {}?"))
    bg = _asked(s.background, tuple(BACKGROUNDS), rnd)
    return _yn(bg == s.background, q.format(bg), f"the background is {s.background}")


def _qa_color_yn(s: Scene, rnd: random.Random, o: Obj) -> QA:
    q = rnd.choice(("Is {} {}?", "Is {} in this image {}?", "Is {} {} in color?"))
    ref = f"the {o.shape}" + (f" {where(o)}" if s.count(shape=o.shape) > 1 else "")
    color = _asked(o.color, tuple(COLORS), rnd)
    return _yn(color == o.color, q.format(ref, color), f"{ref} is {o.color}")


def _qa_shape_yn(s: Scene, rnd: random.Random, o: Obj) -> QA:
    ref = f"the {o.color} object" + (f" {where(o)}" if s.count(color=o.color) > 1 else "")
    shape = _asked(o.shape, SHAPES, rnd)
    return _yn(shape == o.shape, f"Is {ref} {_a(shape)}?", f"{ref} is {_a(o.shape)}")


def _qa_picture_yn(s: Scene, rnd: random.Random, o: Obj) -> QA | None:
    if len(s.objects) > 1:
        return None
    q = rnd.choice(("Is this a picture of {}?", "Is this a photo of {}?", "Is this an image of {}?"))
    if rnd.random() < 0.5:  # ask about a wrong shape or a wrong colour, not both
        color, shape = o.color, _asked(o.shape, SHAPES, rnd)
    else:
        color, shape = _asked(o.color, tuple(COLORS), rnd), o.shape
    return _yn(f"{color} {shape}" == o.name, q.format(_a(f"{color} {shape}")), f"it is a picture of {_a(o.name)}")


def _qa_count_yn(s: Scene, rnd: random.Random, o: Obj) -> QA:
    q = rnd.choice(("Are there {} in the image?", "Is there a total of {} in this image?", "Does the image contain {}?"))
    k = len(s.objects)
    n = _asked(k, [j for j in (k - 1, k + 1, k + 2) if j >= 1], rnd)
    fact = f"there {'is' if k == 1 else 'are'} {_n(k, 'object')} in the image"
    return _yn(n == k, q.format(_n(n, "object")), fact)


# yes/no questions, as LLaVA's conversations (and MME, POPE) ask them, a few phrasings each
YES_NO_QA = (_qa_exist, _qa_background_yn, _qa_color_yn, _qa_shape_yn, _qa_picture_yn, _qa_count_yn)
OPEN_QA = (_qa_color, _qa_shape, _qa_count, _qa_where, _qa_background)
CONV_QA = (*OPEN_QA, _qa_relation, *YES_NO_QA)


def pick_qa(kinds: Sequence[Any], scene: Scene, rnd: random.Random) -> QA:
    """One question of a kind drawn from ``kinds`` about a random object of ``scene``; a kind that
    does not apply to the scene (it returns None) is drawn again."""
    qa = None
    while qa is None:
        qa = rnd.choice(kinds)(scene, rnd, rnd.choice(scene.objects))
    return qa


def qa_turns(scene: Scene, rnd: random.Random, k: int) -> list[QA]:
    """``k`` question/answer pairs of different kinds, each true of ``scene``."""
    out: list[QA] = []
    for gen in rnd.sample(CONV_QA, len(CONV_QA)):
        qa = gen(scene, rnd, rnd.choice(scene.objects))
        if qa is not None and len(out) < k:
            out.append(qa)
    return out


def _short(qa: QA, rnd: random.Random) -> tuple[str, str]:
    """The question with its full answer or (yes/no questions 60%, others 30%) a one-word answer
    asked for with LLaVA-1.5's suffixes (yes/no: " Please answer yes or no." a third of the time)."""
    q, long, short = qa
    yes_no = short in ("yes", "no")
    if rnd.random() >= (0.6 if yes_no else 0.3):
        return q, long
    return q + (YN if yes_no and rnd.random() < 1 / 3 else SHORT), _cap(short)


def describe(scene: Scene, rnd: random.Random) -> str:
    """Detailed paragraph naming every object, its size, colour and position."""
    n = len(scene.objects)
    out = [f"The image shows {_n(n, 'shape')} on a plain {scene.background} background."]
    for o in sorted(scene.objects, key=lambda o: (o.row, o.col)):
        thing = _a(f"{o.size} {o.name}")
        out.append(rnd.choice((f"{_cap(where(o))}, there is {thing}.", f"There is {thing} {where(o)}.",
                               f"{_cap(thing)} can be seen {where(o)}.")))
    if n > 1:
        rel = _qa_relation(scene, rnd, scene.objects[0])
        out.append(rel[1].split(", ", 1)[1].capitalize() if rel else "")
    out.append("There are no other objects in the image.")
    return " ".join(t for t in out if t)


def reasoning(scene: Scene, rnd: random.Random) -> tuple[str, str]:
    """One question that needs inference over the scene, with a long true answer."""
    objs, n = scene.objects, len(scene.objects)
    opts: list[tuple[str, str]] = []
    for edge, key in (("left", lambda o: o.col), ("right", lambda o: -o.col),
                      ("top", lambda o: o.row), ("bottom", lambda o: -o.row)):
        best = min(key(o) for o in objs)
        win = [o for o in objs if key(o) == best]
        if len(win) == 1:
            o = win[0]
            rest = (f" The other object, the {next(b for b in objs if b is not o).name}, is farther from "
                    "that edge." if n == 2 else " The other objects are farther from that edge." if n > 2 else "")
            opts.append((f"Which object is closest to the {edge} edge of the image, and what color is it?",
                         f"The object closest to the {edge} edge is the {o.size} {o.name}, which is "
                         f"{where(o)} of the image. It is {o.color}.{rest}"))
    large = [o for o in objs if o.size == "large"]
    if n > 1 and len(large) == 1:
        small = _join([f"the {o.name}" for o in objs if o.size == "small"])
        opts.append(("Which object appears to be the largest in the image?",
                     f"The largest object is the {large[0].name} {where(large[0])}. "
                     f"Compared with it, {small} {'is' if n == 2 else 'are'} small."))
    o = rnd.choice(objs)
    left = [f"the {b.name}" for b in objs if b is not o]
    opts.append((f"If the {o.name} were removed, how many objects would remain in the image?",
                 f"The image contains {_n(n, 'object')}. Removing the {o.name} would leave "
                 + (f"{_n(n - 1, 'object')}: {_join(left)}." if left else
                    f"no objects, only the plain {scene.background} background.")))
    if n > 1:
        by = Counter(b.color for b in objs)
        color, k = by.most_common(1)[0]
        same = [b.name for b in objs if b.color == color]
        opts.append(("Do any of the objects in the image share the same color?",
                     f"Yes. The {_join(same)} are all {color}." if k > 1 else
                     "No. Every object has a different color: "
                     + _join([f"the {b.shape} is {b.color}" for b in objs]) + "."))
    return rnd.choice(opts)


# ------------------------------------------------------------------------------ writing
def write_jsonl(path: Path, rows: list[Any]) -> Path:
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _rng(seed: int, tag: str, i: int) -> random.Random:
    return random.Random(f"mmln-synth:{seed}:{tag}:{i}")


def _ids(seed: int, tag: str, lo: int, hi: int, n: int) -> list[int]:
    return random.Random(f"mmln-synth:{seed}:{tag}:ids").sample(range(lo, hi), n)


class _Writer:
    def __init__(self, out: Path, size: int) -> None:
        self.out, self.size = out, size
        self.bar: Any = None  # a progress bar over the images (synthesize sets it)
        self.scenes: list[dict[str, Any]] = []  # ground truth of every image written, for scenes.jsonl

    def image(self, rel: str, scene: Scene, rnd: random.Random) -> Path:
        if self.bar is not None:
            self.bar.update(1)
        img, buf = draw(scene, self.size, np.random.default_rng(rnd.getrandbits(64))), io.BytesIO()
        if rel.endswith(".png"):
            img.save(buf, format="PNG")
        else:
            img.save(buf, format="JPEG", quality=90)
        write_bytes(self.out / rel, buf.getvalue())
        self.scenes.append({"image": rel, "scene": scene.to_dict()})
        return self.out / rel


def _conv(*turns: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]


def _record(sid: str, *turns: str) -> dict[str, Any]:
    return {"id": sid, "image": f"{sid}.jpg", "conversations": _conv(*turns)}


def _with_image(q: str, rnd: random.Random) -> str:
    return f"<image>\n{q}" if rnd.random() < 0.5 else f"{q}\n<image>"


def _cc3m(w: _Writer, n: int, seed: int) -> dict[str, Path]:
    recs = []
    for i, gid in enumerate(_ids(seed, "cc3m", 0, 3_318_333, n)):
        rnd = _rng(seed, "cc3m", i)
        scene, name = sample_scene(rnd), f"GCC_train_{gid:09d}"
        w.image(f"cc3m/images/{name}.jpg", scene, rnd)
        recs.append({"id": name, "image": f"{name}.jpg",
                     "conversations": _conv(_with_image(rnd.choice(BRIEF_PROMPTS), rnd), caption(scene, rnd))})
    return {"cc3m_chat": write_json(w.out / "cc3m/chat.json", recs), "cc3m_images": w.out / "cc3m/images"}


def _short_vqa(sid: str, scene: Scene, rnd: random.Random) -> list[dict[str, Any]]:
    """LLaVA-1.5-style short-answer records for one image (not part of LLaVA-Instruct), each a
    single turn: two existence questions (POPE's kind), two other yes/no questions, (one image in
    two) an open question asking for one word and (one in five) a one-sentence caption."""
    out = []
    kinds_per_record = ((_qa_exist,),) * 2 + (YES_NO_QA,) * 2 + ((OPEN_QA,) if rnd.random() < 0.5 else ())
    for k, kinds in enumerate(kinds_per_record):
        q, _, short = pick_qa(kinds, scene, rnd)
        q += YN if short in ("yes", "no") and rnd.random() < 1 / 3 else SHORT
        out.append({"id": f"{sid}_vqa{k}", "image": f"{sid}.jpg",
                    "conversations": _conv(_with_image(q, rnd), _cap(short))})
    if rnd.random() < 0.2:
        out.append({"id": f"{sid}_cap", "image": f"{sid}.jpg",
                    "conversations": _conv(_with_image(rnd.choice(BRIEF_PROMPTS), rnd), sentence(scene, rnd))})
    return out


def _instruct(w: _Writer, n: int, seed: int) -> dict[str, Path]:
    conv: list[dict[str, Any]] = []
    detail: list[dict[str, Any]] = []
    cr: list[dict[str, Any]] = []
    vqa: list[dict[str, Any]] = []
    for i, cid in enumerate(_ids(seed, "instruct", 1, 300_000, n)):
        rnd = _rng(seed, "instruct", i)
        scene, sid = sample_scene(rnd), f"{cid:012d}"
        w.image(f"coco/train2017/{sid}.jpg", scene, rnd)
        rec = partial(_record, sid)
        has_c, has_d, has_r = rnd.random() < 0.72, rnd.random() < 0.28, rnd.random() < 0.95
        vqa += _short_vqa(sid, scene, _rng(seed, "instruct-vqa", i))
        if has_c or not (has_d or has_r):
            turns = [t for qa in qa_turns(scene, rnd, rnd.randint(2, 4)) for t in _short(qa, rnd)]
            conv.append(rec(_with_image(turns[0], rnd), *turns[1:]))
        if has_d:
            detail.append(rec(_with_image(rnd.choice(DETAIL_PROMPTS), rnd), describe(scene, rnd)))
        if has_r:
            q, a = reasoning(scene, rnd)
            cr.append(rec(_with_image(q, rnd), a))
    mix = random.Random(f"mmln-synth:{seed}:instruct-mix")
    # 80K recipe (LLaVA issue #488): exclusive images first, shared images split to balance, then
    # trim both halves to the same size: conversation + complex reasoning on disjoint images.
    c_ids, r_ids = {r["id"] for r in conv}, {r["id"] for r in cr}
    both = sorted(c_ids & r_ids)
    mix.shuffle(both)
    c_take, r_take = sorted(c_ids - r_ids), sorted(r_ids - c_ids)
    for sid in both:
        (c_take if len(c_take) <= len(r_take) else r_take).append(sid)
    k = min(len(c_take), len(r_take))
    c80, r80 = set(mix.sample(c_take, k)), set(mix.sample(r_take, k))
    m80 = [r for r in conv if r["id"] in c80] + [r for r in cr if r["id"] in r80]
    m150 = conv + detail + cr
    mix.shuffle(m80)
    mix.shuffle(m150)
    d = w.out / "llava_instruct"
    return {"instruct_conversation": write_json(d / "conversation_58k.json", conv),
            "instruct_detail": write_json(d / "detail_23k.json", detail),
            "instruct_complex_reasoning": write_json(d / "complex_reasoning_77k.json", cr),
            "instruct_150k": write_json(d / "llava_instruct_150k.json", m150),
            "instruct_80k": write_json(d / "llava_instruct_80k.json", m80),
            "instruct_short_vqa": write_json(d / "short_answer_vqa.json", vqa),
            "coco_train2017": w.out / "coco/train2017"}


def _mme_item(task: str, rnd: random.Random) -> tuple[Scene, str, str]:
    """(scene, question whose answer is Yes, question whose answer is No), without the YN suffix."""
    bg = rnd.choice(tuple(BACKGROUNDS))
    if task in ("existence", "count", "color", "position", "celebrity"):
        while True:
            s = sample_scene(rnd, None if task in ("existence", "count") else rnd.randint(2, 3))
            unique = [o for o in s.objects if s.count(shape=o.shape) == 1]
            if task != "color" or unique:
                break
        o = rnd.choice(unique if task == "color" else s.objects)
        if task == "existence":
            return s, f"Is there {_a(o.name)} in this image?", f"Is there {_a(absent_label(s, rnd))} in this image?"
        if task == "count":
            k = len(s.objects)
            k_wrong = rnd.choice([j for j in (k - 1, k + 1, k + 2) if j >= 1])
            q = "Is there a total of {} in this image?"
            return s, q.format(_n(k, "object")), q.format(_n(k_wrong, "object"))
        if task == "color":
            other = rnd.choice([c for c in COLORS if c != o.color])
            return s, f"Is the {o.shape} in this image {o.color}?", f"Is the {o.shape} in this image {other}?"
        if task == "celebrity":
            s = Scene(s.background, s.objects, box=s.objects.index(o))
            wrong = rnd.choice([b.name for b in s.objects if b is not o])
            q = "Is the object inside the box {}?"
            return s, q.format(_a(o.name)), q.format(_a(wrong))
        b = rnd.choice([b for b in s.objects if b is not o])
        if o.col != b.col:
            true, false = ("left", "right") if o.col < b.col else ("right", "left")
            q = f"Is the {o.name} on the {{}} side of the {b.name}?"
        else:
            true, false = ("above", "below") if o.row < b.row else ("below", "above")
            q = f"Is the {o.name} {{}} the {b.name}?"
        return s, q.format(true), q.format(false)
    if task in ("posters", "landmark"):
        o = Obj(rnd.choice(SHAPES), rnd.choice(tuple(COLORS)), "large", 1, 1, 0.5, 0.5)
        s = Scene(bg, (o,), frame=task == "posters")
        if task == "posters":
            wrong = f"{o.color} {rnd.choice([x for x in SHAPES if x != o.shape])}"
            return s, f"Is this a poster of {_a(o.name)}?", f"Is this a poster of {_a(wrong)}?"
        wrong = f"{rnd.choice([c for c in COLORS if c != o.color])} {o.shape}"
        return s, f"Is this a photo of {_a(o.name)}?", f"Is this a photo of {_a(wrong)}?"
    if task == "scene":
        s = sample_scene(rnd, background=bg)
        other = rnd.choice([b for b in BACKGROUNDS if b != bg])
        return s, f"Is the background of this image {bg}?", f"Is the background of this image {other}?"
    if task == "artwork":
        shape = rnd.choice(SHAPES)
        s = sample_scene(rnd, rnd.randint(2, 3), shapes=(shape,), background=bg)
        other = rnd.choice([x for x in SHAPES if x != shape])
        q = "Does this artwork consist only of {}?"
        return s, q.format(_pl(shape)), q.format(_pl(other))
    if task == "OCR":
        word, wrong = rnd.sample(OCR_WORDS, 2)
        return Scene(bg, text=word), f'Is the word in this image "{word}"?', f'Is the word in this image "{wrong}"?'
    if task == "commonsense_reasoning":
        color = rnd.choice(("red", "green"))
        s = Scene("black", (Obj("circle", color, "large", 1, 1, 0.5, 0.5),))
        stop, go = "This is a traffic light. Should you stop?", "This is a traffic light. Is it safe to go?"
        return (s, stop, go) if color == "red" else (s, go, stop)
    if task == "numerical_calculation":
        s = sample_scene(rnd, background=bg)
        k, add = len(s.objects), rnd.randint(1, 4)
        q = f"Is the number of objects in this image plus {NUM[add]} equal to {{}}?"
        return s, q.format(k + add), q.format(k + add + rnd.choice((-1, 1, 2)))
    if task == "text_translation":
        color, wrong = rnd.sample(tuple(COLORS), 2)
        s = Scene(bg, text=FRENCH[color], ink=color)
        q = "Is it appropriate to translate the French word in the image into English as '{}'?"
        return s, q.format(color), q.format(wrong)
    assert task == "code_reasoning", task
    x, y, op = rnd.randint(1, 9), rnd.randint(1, 9), rnd.choice("+*")
    res = x + y if op == "+" else x * y
    s = Scene(bg, text=f"a = {x}\nb = {y}\nprint(a {op} b)")
    q = "The image shows a python code. Is the output of the code '{}'?"
    return s, q.format(res), q.format(res + rnd.choice((-2, -1, 1, 3)))


def _mme(w: _Writer, n: int, seed: int) -> dict[str, Path]:
    root = w.out / "mme/MME_Benchmark_release_version"
    for task in MME_SUBTASKS:
        coco = task in ("existence", "count", "position", "color")
        ids = _ids(seed, f"mme-{task}", 560_000, 581_930, n) if coco else range(1, n + 1)
        ext = ".png" if task in MME_COGNITION else ".jpg"
        img_dir, qa_dir = ((root / task / "images", root / task / "questions_answers_YN")
                           if task in MME_IMAGES_DIR else (root / task, root / task))
        for i, iid in enumerate(ids):
            rnd = _rng(seed, f"mme-{task}", i)
            scene, q_yes, q_no = _mme_item(task, rnd)
            stem = f"{iid:012d}" if coco else f"{iid:04d}"
            w.image(str((img_dir / (stem + ext)).relative_to(w.out)), scene, rnd)
            write_bytes(qa_dir / f"{stem}.txt", f"{q_yes}{YN}\tYes\n{q_no}{YN}\tNo\n".encode())
    return {"mme_root": root}


class MMERow(NamedTuple):
    subtask: str
    image: Path
    question: str
    gt: str  # "Yes" | "No"


def read_mme(root: str | Path) -> list[MMERow]:
    """Read an MME release folder (real or synthetic) into rows in official order: subtasks in
    the order of MME_SUBTASKS, question files sorted by name, lines in file order (Yes, No)."""
    root = Path(root)
    if (root / "MME_Benchmark_release_version").is_dir():
        root = root / "MME_Benchmark_release_version"
    rows: list[MMERow] = []
    for task in MME_SUBTASKS:
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


def _adversarial_key(lab: str, present: list[str], cooc: Counter[tuple[str, str]]) -> tuple[bool, int, str]:
    similar = any(set(lab.split()) & set(p.split()) for p in present)
    return (not similar, -sum(cooc[(p, lab)] for p in present), lab)


def pope_questions(scenes: list[Scene], strategy: str, rnd: random.Random) -> list[tuple[int, str, str]]:
    """POPE sampling for each image (index, label, yes|no): its 3 objects (yes) interleaved with
    3 absent labels (no) sampled at random / most frequent overall / co-occurring or similar."""
    freq = Counter(lab for s in scenes for lab in s.labels)
    cooc = Counter((a, b) for s in scenes for a in s.labels for b in s.labels if a != b)
    popular = sorted(LABELS, key=lambda lab: (-freq[lab], lab))
    rows = []
    for i, s in enumerate(scenes):
        absent = [lab for lab in LABELS if lab not in s.labels]
        if strategy == "random":
            neg = rnd.sample(absent, 3)
        elif strategy == "popular":
            neg = [lab for lab in popular if lab not in s.labels][:3]
        else:  # adversarial: same shape or colour as a present object first, then most co-occurring
            neg = sorted(absent, key=partial(_adversarial_key, present=s.labels, cooc=cooc))[:3]
        pos = rnd.sample(s.labels, 3)
        for p, q in zip(pos, neg, strict=True):
            rows += [(i, p, "yes"), (i, q, "no")]
    return rows


def _pope(w: _Writer, n: int, seed: int) -> dict[str, Path]:
    scenes, names = [], []
    for i, cid in enumerate(_ids(seed, "pope", 300_000, 340_000, n)):
        rnd = _rng(seed, "pope", i)
        scenes.append(sample_scene(rnd, 3))
        names.append(f"COCO_val2014_{cid:012d}.jpg")
        w.image(f"coco/val2014/{names[-1]}", scenes[-1], rnd)
    paths = {}
    for split in ("random", "popular", "adversarial"):
        rows = pope_questions(scenes, split, random.Random(f"mmln-synth:{seed}:pope-{split}"))
        paths[f"pope_{split}"] = write_jsonl(w.out / f"pope/coco_pope_{split}.json", [
            {"question_id": k + 1, "image": names[i], "text": f"Is there {_a(lab)} in the image?", "label": y}
            for k, (i, lab, y) in enumerate(rows)])
    return paths | {"coco_val2014": w.out / "coco/val2014"}


def _vqa_answers(canon: str, variants: Sequence[str], rnd: random.Random) -> list[dict[str, Any]]:
    ans = [canon if not variants or rnd.random() < 0.75 else rnd.choice(variants) for _ in range(10)]
    return [{"answer": a, "answer_confidence": "yes" if rnd.random() < 0.9 else "maybe", "answer_id": k + 1}
            for k, a in enumerate(ans)]


def _vqa(w: _Writer, n: int, seed: int) -> dict[str, Path]:
    qs, anns = [], []
    for i, cid in enumerate(_ids(seed, "vqa", 340_000, 420_000, n)):
        rnd = _rng(seed, "vqa", i)
        s = sample_scene(rnd)
        w.image(f"coco/val2014/COCO_val2014_{cid:012d}.jpg", s, rnd)
        o = rnd.choice(s.objects)
        lab = o.name if rnd.random() < 0.5 else absent_label(s, rnd)
        k, shape = len(s.objects), rnd.choice(SHAPES)
        items = [(f"Is there {_a(lab)} in the picture?", "is there a", "yes/no", "yes" if s.find(lab) else "no", ()),
                 (("How many objects are there?", "how many", "number", str(k), (NUM[k],)) if rnd.random() < 0.5 else
                  (f"How many {_pl(shape)} are in the image?", "how many", "number", str(s.count(shape=shape)),
                   (NUM[s.count(shape=shape)],)))]
        if s.count(shape=o.shape) == 1:
            items.append((f"What color is the {o.shape}?", "what color is the", "other", o.color,
                          (f"{o.color} color", f"bright {o.color}")))
        else:
            items.append(("What color is the background?", "what color is the", "other", s.background,
                          (f"{s.background} color", "plain " + s.background)))
        for j, (q, qtype, atype, canon, var) in enumerate(items):
            qid = cid * 1000 + j
            answers = _vqa_answers(canon, var, rnd)
            votes = Counter(a["answer"] for a in answers)
            mc = max(votes, key=lambda a: (votes[a], a == canon))
            qs.append({"image_id": cid, "question": q, "question_id": qid})
            anns.append({"question_type": qtype, "multiple_choice_answer": mc, "answers": answers,
                         "image_id": cid, "answer_type": atype, "question_id": qid})
    d, meta = w.out / "vqav2", {"info": VQA_INFO, "license": VQA_LICENSE, "data_subtype": "val2014"}
    return {"vqa_questions": write_json(d / "v2_OpenEnded_mscoco_val2014_questions.json",
                                        {**meta, "task_type": "Open-Ended", "data_type": "mscoco", "questions": qs}),
            "vqa_annotations": write_json(d / "v2_mscoco_val2014_annotations.json",
                                          {**meta, "data_type": "mscoco", "annotations": anns})}


def _karpathy(w: _Writer, n: int, seed: int, coco: bool) -> Path:
    tag = "karpathy-coco" if coco else "karpathy-flickr"
    ids = _ids(seed, tag, 420_000, 560_000, n) if coco else _ids(seed, tag, 10**9, 10**10 - 1, n)
    splits = ("test", "val", "train", "train", "restval") if coco else ("test", "val", "train", "train")
    images, sentid = [], 0
    for i, iid in enumerate(ids):
        rnd = _rng(seed, tag, i)
        s, split = sample_scene(rnd), splits[i % len(splits)]
        if coco:
            fp = "train2014" if split == "train" else "val2014"
            entry: dict[str, Any] = {"filepath": fp, "filename": f"COCO_{fp}_{iid:012d}.jpg"}
            w.image(f"coco/{fp}/{entry['filename']}", s, rnd)
        else:
            entry = {"filename": f"{iid}.jpg"}
            w.image(f"flickr30k/{iid}.jpg", s, rnd)
        raws: list[str] = []
        for _ in range(40):  # 5 distinct references when the scene allows it
            if (r := sentence(s, rnd)) not in raws and len(raws) < 5:
                raws.append(r)
        raws += [sentence(s, rnd) for _ in range(5 - len(raws))]
        sents = [{"tokens": re.findall(r"[a-z0-9]+", r.lower()), "raw": r, "imgid": i, "sentid": sentid + k}
                 for k, r in enumerate(raws)]
        entry |= {"imgid": i, "sentids": [x["sentid"] for x in sents], "split": split, "sentences": sents}
        if coco:
            entry["cocoid"] = iid
        images.append(entry)
        sentid += len(sents)
    name = "dataset_coco.json" if coco else "dataset_flickr30k.json"
    return write_json(w.out / "karpathy" / name, {"images": images, "dataset": "coco" if coco else "flickr30k"})


def synthesize(out: str | Path, *, image_size: int = 224, n_pretrain: int = 3000, n_instruct: int = 1000,
               n_mme_per_subtask: int = 10, n_pope_images: int = 50, n_vqa_images: int = 100,
               n_caption_images: int = 100, seed: int = 0) -> dict[str, Path]:
    """Write every synthetic data set under ``out``; return {name: path} of files and image folders.

    ``n_instruct`` counts train2017 images: each has a conversation (p=.72), detail (p=.28) and/or
    complex-reasoning (p=.95) record, so the 150K mix holds about 1.95 records per image.
    POPE: 6 questions per image (3 yes, 3 no) per split. VQAv2: 3 questions per image. Karpathy:
    ``n_caption_images`` images each for COCO (test/val/train/train/restval by index) and Flickr30k.
    MME: ``n_mme_per_subtask`` images x 2 questions for each of the 14 subtasks. Defaults take
    about 6 s on 2 CPU cores (about 4,700 images, 62 MB at 224 px). Files from an earlier run into
    the same folder are overwritten, not deleted.
    """
    from mmln.progress import bar

    out = Path(out)
    w = _Writer(out, image_size)
    w.bar = bar(total=n_pretrain + n_instruct + 14 * n_mme_per_subtask + n_pope_images + n_vqa_images
                + 2 * n_caption_images, desc=f"synth {out.name}", unit="img")  # every image, one each
    paths = _cc3m(w, n_pretrain, seed) | _instruct(w, n_instruct, seed) | _mme(w, n_mme_per_subtask, seed)
    paths |= _pope(w, n_pope_images, seed) | _vqa(w, n_vqa_images, seed)
    paths["karpathy_coco"] = _karpathy(w, n_caption_images, seed, coco=True)
    paths["karpathy_flickr30k"] = _karpathy(w, n_caption_images, seed, coco=False)
    paths |= {"coco_train2014": out / "coco/train2014", "flickr30k_images": out / "flickr30k"}
    paths["scenes"] = write_jsonl(out / "scenes.jsonl", w.scenes)
    w.bar.close()
    return paths


def text_corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` plain sentences in the shape-world vocabulary (captions, Q&A, descriptions, prompts),
    for training a tiny tokenizer and pretraining a tiny base LM."""
    out: list[str] = []
    for i in range(n):
        rnd = _rng(seed, "corpus", i)
        s, kind = sample_scene(rnd), rnd.randrange(8)
        if kind == 0:
            out.append(caption(s, rnd))
        elif kind == 1:
            out.append(sentence(s, rnd))
        elif kind in (2, 3):
            out.append(" ".join(" ".join(_short(qa, rnd)) for qa in qa_turns(s, rnd, rnd.randint(1, 3))))
        elif kind == 4:
            out.append(rnd.choice(DETAIL_PROMPTS) + " " + describe(s, rnd))
        elif kind == 5:
            out.append(" ".join(reasoning(s, rnd)))
        elif kind == 6:
            out.append(rnd.choice(BRIEF_PROMPTS) + " " + caption(s, rnd))
        else:
            _, q_yes, q_no = _mme_item(rnd.choice(MME_SUBTASKS), rnd)
            out.append(f"{q_yes}{YN} Yes" if rnd.random() < 0.5 else f"{q_no}{YN} No")
    return out


# id of each record bad_samples() writes -> the defect it carries (mmln.data.dataset.REASONS names)
BAD_REASONS = {"bad_missing_image": "missing_image", "bad_corrupt_image": "corrupt_image",
               "bad_truncated_image": "truncated_image", "bad_malformed_no_conversations": "malformed",
               "bad_malformed_types": "malformed", "bad_malformed_turn": "malformed",
               "bad_no_assistant": "no_assistant", "bad_missing_image_token": "missing_image_token",
               "bad_repeated_image_token": "repeated_image_token"}


def bad_samples(out: str | Path) -> Path:
    """Write ``out/bad_instruct.json`` (images in ``out/images/``): 3 good records (ids ``good_<i>``)
    and one record of each bad-input kind, ids as in ``BAD_REASONS``. Returns the JSON path."""
    out = Path(out)
    rnd = _rng(0, "bad", 0)
    w = _Writer(out, 64)
    good = []
    for i in range(3):
        s = sample_scene(rnd)
        w.image(f"images/good_{i}.jpg", s, rnd)
        q, a, _ = _qa_color(s, rnd, s.objects[0])
        good.append({"id": f"good_{i}", "image": f"good_{i}.jpg", "conversations": _conv(f"<image>\n{q}", a)})
    jpeg = (out / "images/good_0.jpg").read_bytes()
    write_bytes(out / "images/corrupt.jpg", bytes(rnd.getrandbits(8) for _ in range(2048)))
    write_bytes(out / "images/truncated.jpg", jpeg[: len(jpeg) // 2])
    ok = _conv("<image>\nDescribe the image concisely.", "some simple shapes .")
    bad = [
        {"id": "bad_missing_image", "image": "does_not_exist.jpg", "conversations": ok},
        {"id": "bad_corrupt_image", "image": "corrupt.jpg", "conversations": ok},
        {"id": "bad_truncated_image", "image": "truncated.jpg", "conversations": ok},
        {"id": "bad_malformed_no_conversations", "image": "good_0.jpg"},
        {"id": "bad_malformed_types", "image": 7, "conversations": "What color is the circle?"},
        {"id": "bad_malformed_turn", "image": "good_0.jpg",
         "conversations": [{"from": "human", "value": None}, {"speaker": "gpt", "text": "Red."}]},
        {"id": "bad_no_assistant", "image": "good_1.jpg", "conversations": ok[:1]},
        {"id": "bad_missing_image_token", "image": "good_1.jpg",
         "conversations": _conv("Describe the image concisely.", "some simple shapes .")},
        {"id": "bad_repeated_image_token", "image": "good_2.jpg",
         "conversations": _conv("<image>\nDescribe the image concisely.\n<image>", "some simple shapes .")},
    ]
    return write_json(out / "bad_instruct.json", good[:2] + bad + good[2:])


# LLaVA-1.5's llava_v1_5_mix665k.json: image paths under one root, by source; ShareGPT records text-only
MIX665K_SOURCES = (("coco/train2017", "{:012d}"), ("gqa/images", "{:d}"), ("ocr_vqa/images", "{:d}"),
                   ("textvqa/train_images", "{:016x}"), ("vg/VG_100K", "{:d}"))


def mix665k(out: str | Path, n_per_source: int = 2, n_text: int = 2, image_size: int = 64, seed: int = 0) -> Path:
    """Write ``out/llava_v1_5_mix665k.json`` in LLaVA-1.5's format: ``n_per_source`` image records
    for each source folder (images written under ``out/`` at the record's sub-folder path, so the
    one image root is ``out``) and ``n_text`` multi-turn text-only records (no ``image`` key, as
    the ShareGPT part). Returns the JSON path."""
    out, w, recs = Path(out), _Writer(Path(out), image_size), []
    for folder, fmt in MIX665K_SOURCES:
        for i in range(n_per_source):
            rnd = _rng(seed, f"mix665k:{folder}", i)
            scene, sid = sample_scene(rnd), fmt.format(rnd.getrandbits(40))
            w.image(f"{folder}/{sid}.jpg", scene, rnd)
            turns = [t for q, a, _ in qa_turns(scene, rnd, 2) for t in (q, a)]
            recs.append({"id": sid, "image": f"{folder}/{sid}.jpg",
                         "conversations": _conv(_with_image(turns[0], rnd), *turns[1:])})
    for i in range(n_text):
        rnd = _rng(seed, "mix665k:sharegpt", i)
        a, b = sample_scene(rnd), sample_scene(rnd)
        recs.append({"id": f"sg{rnd.getrandbits(24):06x}_{i}", "conversations": _conv(
            f"Describe a picture of {_a(a.objects[0].name)}.", sentence(a, rnd),
            f"And one of {_a(b.objects[0].name)}?", sentence(b, rnd))})
    return write_json(out / "llava_v1_5_mix665k.json", recs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mmln.data synth", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-pretrain", type=int, default=3000, help="CC3M-style records (= images)")
    p.add_argument("--n-instruct", type=int, default=1000, help="train2017 images for LLaVA-Instruct")
    p.add_argument("--n-mme-per-subtask", type=int, default=10)
    p.add_argument("--n-pope-images", type=int, default=50)
    p.add_argument("--n-vqa-images", type=int, default=100)
    p.add_argument("--n-caption-images", type=int, default=100, help="per Karpathy data set")
    p.add_argument("--bad-samples", action="store_true", help="also write OUT/bad/ (loader robustness)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    paths = synthesize(a.out, image_size=a.image_size, n_pretrain=a.n_pretrain, n_instruct=a.n_instruct,
                       n_mme_per_subtask=a.n_mme_per_subtask, n_pope_images=a.n_pope_images,
                       n_vqa_images=a.n_vqa_images, n_caption_images=a.n_caption_images, seed=a.seed)
    if a.bad_samples:
        paths["bad_samples"] = bad_samples(Path(a.out) / "bad")
    for k, v in paths.items():
        print(f"{k:28s} {v}")
    print(f"wrote {len(paths)} outputs in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
