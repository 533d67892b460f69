"""Image loading and preprocessing (LLaVA v1: CLIPImageProcessor; timm ViTs: timm's transforms).

- `load_image`: open, decode fully (so truncated files fail here, not later) and convert to RGB
  the way transformers' `convert_to_rgb` does (transparency composited onto white; grayscale,
  CMYK and palette images through PIL's own conversion; 16-bit and 32-bit gray scaled to 8 bits,
  not clipped). LLaVA v1 called `.convert("RGB")`,
  which differs only for images with transparency (absent from COCO / CC3M JPEGs).
- `ClipPreprocess`: CLIPImageProcessor at `image_size` px: resize the shortest side with PIL
  bicubic, center crop, rescale 1/255, normalize with the CLIP mean / std. Written with PIL +
  numpy for speed; equal (<1e-5) to transformers' PIL backend `CLIPImageProcessorPil`, the
  behaviour LLaVA trained with (transformers 4.x). transformers 5's default
  `CLIPImageProcessor` resizes with torchvision's antialiased bicubic instead, which rounds
  some pixels one or two uint8 levels differently (see tests/test_data_images.py).
- `pad=True` (`data.image_aspect=pad`, LLaVA-1.5's `expand2square`): first pad to a square
  canvas of the CLIP mean colour (122, 116, 104), the image centred.
- `TimmPreprocess`: `timm.data.resolve_data_config` + `create_transform` from the timm model
  name's pretrained config (no weights are loaded), eval mode.
- `ImageLimits` (`data.max_image_pixels`, `data.max_image_aspect`, `data.max_padded_pixels`): an
  image's cost is bounded before it is decoded. PIL reads only the header on open, so `load_image`
  checks the size there and raises `ImageTooLargeError` before a pixel is decoded; the processors
  check again (an image handed in already decoded) before they resize or pad. Without the check a
  1.8 KB 600000x1 PNG asks the shortest-side resize for a 134400000x224 image (about 90 GB), and a
  143-byte 20000x1 one with pad-to-square for a 20000x20000 canvas (1.2 GB).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image

from mmln.base.constants import MAX_IMAGE_ASPECT, MAX_IMAGE_PIXELS, MAX_PADDED_PIXELS

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD_COLOR = (122, 116, 104)  # tuple(int(x * 255) for x in CLIP_MEAN), LLaVA's background

ImageProcessor = Callable[[Image.Image], torch.Tensor]


class ImageTooLargeError(ValueError):
    """An image whose size (from its header) exceeds `ImageLimits`; the message names the limit's key.
    Raised in a DataLoader worker, torch re-raises it with its traceback as the message: kept to the
    one line it had."""

    def __init__(self, message: str):
        if "Original Traceback" in message:  # torch's ExceptionWrapper.reraise
            message = message.rstrip().rsplit("\n", 1)[-1].split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


@dataclass(frozen=True)
class ImageLimits:
    """What one image may cost, checked from its size alone (defaults: `mmln.base.constants`).

    max_pixels: width x height of the decoded image.
    max_aspect: long side / short side.
    max_padded_pixels: the pad-to-square canvas, long side squared (`data.image_aspect=pad` only).
    """

    max_pixels: int = MAX_IMAGE_PIXELS
    max_aspect: float = MAX_IMAGE_ASPECT
    max_padded_pixels: int = MAX_PADDED_PIXELS

    @classmethod
    def of(cls, data: Any) -> "ImageLimits":
        """From `cfg.data`."""
        return cls(int(data.max_image_pixels), float(data.max_image_aspect), int(data.max_padded_pixels))

    def check(self, size: tuple[int, int], pad: bool = False, where: str = "image") -> None:
        """Raise `ImageTooLargeError` naming `where`, the size and the key of the limit it exceeds."""
        w, h = size
        if w * h > self.max_pixels:
            raise ImageTooLargeError(f"{where}: {w}x{h} is {w * h} pixels, over data.max_image_pixels="
                                     f"{self.max_pixels}; shrink the image or raise the limit")
        if max(w, h) > self.max_aspect * max(min(w, h), 1):
            raise ImageTooLargeError(f"{where}: {w}x{h} has aspect ratio {max(w, h) / max(min(w, h), 1):.4g}, over "
                                     f"data.max_image_aspect={self.max_aspect:g}; crop the image or raise the limit")
        if pad and max(w, h) ** 2 > self.max_padded_pixels:
            raise ImageTooLargeError(f"{where}: {w}x{h} padded to square is {max(w, h) ** 2} pixels, over "
                                     f"data.max_padded_pixels={self.max_padded_pixels}; shrink the image or raise "
                                     "the limit")


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit gray modes scaled to 8-bit "L" (PIL's own conversion clips them at 255, so a
    16-bit PNG became all white): I;16* by 1/257 (65535 -> 255); "I" likewise when its values exceed
    8 bits; "F" from [0, 1] when it lies there, else clipped to [0, 255]."""
    a = np.asarray(image)
    if image.mode.startswith("I;16") or (image.mode == "I" and a.size and a.max() > 255):
        a = np.clip(a.astype(np.float64) / 257.0, 0, 255)
    elif image.mode == "F" and a.size and a.min() >= 0 and a.max() <= 1:
        a = a.astype(np.float64) * 255.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))  # 2-D uint8: mode "L"


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of `image`; transparency composited onto white (transformers' `convert_to_rgb`);
    16/32-bit gray scaled to 8 bits first. A mode PIL cannot convert raises ValueError."""
    if image.mode in ("LAB", "HSV"):  # PIL converts these channel by channel, which is not colour-true
        raise ValueError(f"image mode {image.mode} is not supported: convert it to RGB first")
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(path: str | Path, limits: Optional[ImageLimits] = None, pad: bool = False) -> Image.Image:
    """Open, check the header's size against `limits` (default `ImageLimits()`; `pad`: the image will
    be padded to square), then fully decode as RGB. Raises FileNotFoundError,
    PIL.UnidentifiedImageError (not an image), ImageTooLargeError (before decoding) or OSError
    (e.g. "image file is truncated")."""
    with Image.open(path) as im:
        (limits or ImageLimits()).check(im.size, pad, str(path))
        im.load()
        return to_rgb(im)


def expand2square(image: Image.Image, fill: tuple[int, int, int] = PAD_COLOR) -> Image.Image:
    """LLaVA-1.5's `expand2square`: pad the short side, image centred, with `fill`."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


class ClipPreprocess:
    """CLIPImageProcessor (shortest edge = crop = `image_size`, bicubic, CLIP mean/std) -> (3,S,S) float32."""

    def __init__(
        self,
        image_size: int = 224,
        mean: tuple[float, ...] = CLIP_MEAN,
        std: tuple[float, ...] = CLIP_STD,
        pad: bool = False,
        limits: Optional[ImageLimits] = None,
    ):
        self.size = image_size
        self.pad = pad
        self.limits = limits or ImageLimits()
        # uint8 -> normalized value lookup, per channel, computed exactly as CLIPImageProcessorPil
        # does it (rescale in float64, cast to float32, normalize in float32)
        levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
        m, sd = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
        self.lut = np.stack([(levels - m[c]) / sd[c] for c in range(3)])  # (3, 256) float32

    def check(self, size: tuple[int, int], where: str = "image") -> None:
        """`ImageTooLargeError` when an image of `size` would cost more than `limits` allow."""
        self.limits.check(size, self.pad, where)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        self.check(image.size)
        image = to_rgb(image)
        if self.pad:
            image = expand2square(image)
        s = self.size
        w, h = image.size
        # transformers' get_resize_output_image_size(default_to_square=False): int() of the long side
        new_w, new_h = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        top, left = int((new_h - s) / 2), int((new_w - s) / 2)
        a = np.asarray(image, dtype=np.uint8)[top : top + s, left : left + s]
        out = np.stack([self.lut[c][a[:, :, c]] for c in range(3)])
        return torch.from_numpy(out)


class TimmPreprocess:
    """timm's eval transform for `name` (from its pretrained config, no download), optionally at
    another `image_size` and after LLaVA's pad-to-square."""

    def __init__(self, name: str, image_size: int | None = None, pad: bool = False,
                 limits: Optional[ImageLimits] = None):
        import timm.data
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        if cfg is None:
            raise ValueError(f"timm has no pretrained config for {name!r} (model.vision.name)")
        data_cfg = timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict())
        if image_size is not None:
            data_cfg["input_size"] = (3, image_size, image_size)
        self.data_cfg = data_cfg
        self.transform = timm.data.create_transform(**data_cfg, is_training=False)
        self.pad = pad
        self.limits = limits or ImageLimits()
        mean = tuple(int(round(m * 255)) for m in data_cfg["mean"])
        self.fill = mean if len(mean) == 3 else PAD_COLOR

    check = ClipPreprocess.check

    def __call__(self, image: Image.Image) -> torch.Tensor:
        self.check(image.size)
        image = to_rgb(image)
        if self.pad:
            image = expand2square(image, self.fill)
        return self.transform(image)


def build_image_processor(vision: Any, image_aspect: str = "square", limits: Optional[ImageLimits] = None
                          ) -> ImageProcessor:
    """From `cfg.model.vision` (preprocess, name, image_size), `cfg.data.image_aspect` and
    `ImageLimits.of(cfg.data)` (default: `ImageLimits()`)."""
    pad = image_aspect == "pad"
    if vision.preprocess == "timm":
        return TimmPreprocess(vision.name, vision.image_size, pad=pad, limits=limits)
    if vision.preprocess == "clip":
        return ClipPreprocess(vision.image_size, pad=pad, limits=limits)
    raise ValueError(f"model.vision.preprocess={vision.preprocess!r} is not one of clip, timm")


def pair_questions(image, question) -> tuple[bool, list, list[str]]:
    """`ask`'s arguments as (single, images, questions): one image (a path, a PIL image or None) for
    every question, or one per question; every image path must exist."""
    single = isinstance(question, str)
    questions = [question] if single else list(question)
    images = [image] * len(questions) if image is None or not isinstance(image, (list, tuple)) else list(image)
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions: give one image, or one per question")
    for im in images:
        if isinstance(im, (str, Path)) and not Path(im).is_file():
            raise FileNotFoundError(f"image not found: {im}")
    return single, images, questions
