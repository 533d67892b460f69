"""The shape world: scenes of 1-3 coloured shapes on a 3x3 grid, drawn with PIL, and the per-item
seeded RNGs every synthetic data set draws from."""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


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
def font_of(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=px)


def jitter(rgb: tuple[int, int, int], rng: np.random.Generator, a: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(v + rng.integers(-a, a + 1), 0, 255)) for v in rgb)  # type: ignore[return-value]


def ink_of(scene: Scene) -> tuple[int, int, int]:
    return COLORS[scene.ink] if scene.ink else (15, 15, 15) if scene.background == "white" else (240, 240, 240)


def draw(scene: Scene, size: int = 224, rng: np.random.Generator | None = None) -> Image.Image:
    """Render ``scene`` as a ``size`` x ``size`` RGB image (colour jitter + pixel noise from ``rng``)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    img = Image.new("RGB", (size, size), jitter(BACKGROUNDS[scene.background], rng, 6))
    d = ImageDraw.Draw(img)
    line = max(1, size // 45)
    if scene.frame:
        d.rectangle([0, 0, size - 1, size - 1], outline=ink_of(scene), width=2 * line)
    for o in scene.objects:
        cx, cy, r, fill = o.x * size, o.y * size, SIZES[o.size] * size, jitter(COLORS[o.color], rng, 12)
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
                    outline=ink_of(scene), width=line)
    if scene.text:
        longest = max(len(t) for t in scene.text.splitlines())
        px = max(6, int(min(0.3 * size, 1.3 * size / max(longest, 1)) * (0.8 if "\n" in scene.text else 1)))
        d.multiline_text((size / 2, size / 2), scene.text, fill=ink_of(scene), font=font_of(px),
                         anchor="mm", align="center")
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-8, 9, (size, size, 3), dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def seeded_rng(seed: int, tag: str, i: int) -> random.Random:
    return random.Random(f"mmln-synth:{seed}:{tag}:{i}")


def seeded_ids(seed: int, tag: str, lo: int, hi: int, n: int) -> list[int]:
    return random.Random(f"mmln-synth:{seed}:{tag}:ids").sample(range(lo, hi), n)
