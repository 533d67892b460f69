"""Image loading and CLIP / timm preprocessing against transformers' and timm's own code."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from mmln.config import load_config
from mmln.data.images import (
    CLIP_MEAN,
    CLIP_STD,
    PAD_COLOR,
    ClipPreprocess,
    TimmPreprocess,
    build_image_processor,
    expand2square,
    load_image,
)


def clip_kwargs(size: int = 224) -> dict:
    return dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_resize=True,
                do_center_crop=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                do_convert_rgb=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), resample=3)


def photo(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Smooth gradient + noise, JPEG round-tripped, then converted to `mode`."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x / max(w, 1) * 255, y / max(h, 1) * 255, (x + y) / (w + h) * 255], -1) + rng.normal(0, 20, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    im = Image.open(io.BytesIO(buf.getvalue()))
    if mode == "RGBA":
        im = im.convert("RGBA")
        im.putalpha(Image.fromarray(np.clip(x / max(w, 1) * 255, 0, 255).astype(np.uint8)))  # partly transparent
    elif mode != "RGB":
        im = im.convert(mode)
    return im


CASES = [(640, 480, "RGB"), (480, 640, "RGB"), (224, 224, "RGB"), (3, 5, "RGB"), (1000, 20, "RGB"), (20, 1000, "RGB"),
         (500, 375, "L"), (333, 250, "RGBA"), (300, 301, "CMYK"), (257, 190, "P"), (7, 3, "P")]


@pytest.mark.parametrize("w,h,mode", CASES)
def test_clip_matches_clip_image_processor(w, h, mode):
    img = photo(w, h, mode)
    ours = ClipPreprocess(224)(img)
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    # transformers' PIL backend: what LLaVA ran (transformers 4.x CLIPImageProcessor resized with PIL)
    ref = CLIPImageProcessorPil(**clip_kwargs())(img, return_tensors="pt")["pixel_values"][0]
    assert (ours - ref).abs().max().item() < 1e-5
    # transformers 5's default CLIPImageProcessor resizes with torchvision's antialiased bicubic,
    # which rounds some pixels up to two uint8 levels differently; same geometry otherwise
    tv = CLIPImageProcessor(**clip_kwargs())(img, return_tensors="pt")["pixel_values"][0]
    level = 1 / 255 / min(CLIP_STD)
    assert (ours - tv).abs().max().item() <= 2 * level + 1e-5
    assert (ours - tv).abs().mean().item() < 0.2 * level


@pytest.mark.parametrize("size", [64, 336])
def test_clip_other_sizes(size):
    img = photo(320, 200)
    ref = CLIPImageProcessorPil(**clip_kwargs(size))(img, return_tensors="pt")["pixel_values"][0]
    assert (ClipPreprocess(size)(img) - ref).abs().max().item() < 1e-5


def test_pad_to_square_fills_with_mean_colour():
    img = photo(300, 100)
    sq = expand2square(img)
    assert sq.size == (300, 300) and sq.getpixel((0, 0)) == PAD_COLOR and sq.getpixel((150, 150)) == img.getpixel((150, 50))
    ours = ClipPreprocess(224, pad=True)(img)
    ref = CLIPImageProcessorPil(**clip_kwargs())(sq, return_tensors="pt")["pixel_values"][0]
    assert (ours - ref).abs().max().item() < 1e-5
    expect = [(PAD_COLOR[c] / 255 - CLIP_MEAN[c]) / CLIP_STD[c] for c in range(3)]
    assert torch.allclose(ours[:, 0, 0], torch.tensor(expect), atol=1e-5)  # the pad is ~0 after normalizing
    assert ours[:, 0, 0].abs().max() < 0.02


def test_load_image_converts_to_rgb(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent -> white, as transformers does
    rgba.save(tmp_path / "a.png")
    Image.new("L", (4, 4), 77).save(tmp_path / "g.png")
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert load_image(tmp_path / "a.png").getpixel((0, 0)) == (255, 255, 255)
    assert load_image(tmp_path / "g.png").getpixel((0, 0)) == (77, 77, 77)
    im = load_image(tmp_path / "c.jpg")
    assert im.mode == "RGB" and im.getpixel((0, 0)) == (255, 255, 255)


def test_timm_preprocessing_from_model_name():
    tp = TimmPreprocess("vit_large_patch16_224.augreg_in21k")
    assert tp.data_cfg["mean"] == (0.5, 0.5, 0.5) and tp.data_cfg["crop_pct"] == 0.9
    gray = Image.new("RGB", (300, 200), (51, 102, 204))
    out = tp(gray)
    assert out.shape == (3, 224, 224)
    assert torch.allclose(out[:, 100, 100], torch.tensor([51 / 255 * 2 - 1, 102 / 255 * 2 - 1, 204 / 255 * 2 - 1]), atol=1e-5)
    import timm.data
    from timm.models import get_pretrained_cfg

    ref = timm.data.create_transform(**timm.data.resolve_data_config(
        pretrained_cfg=get_pretrained_cfg("vit_large_patch16_224.augreg_in21k").to_dict()), is_training=False)
    img = photo(320, 240)
    assert torch.equal(tp(img), ref(img))


def test_build_from_config():
    cfg = load_config(None, ["model.vision.image_size=64"])
    p = build_image_processor(cfg.model.vision, cfg.data.image_aspect)
    assert isinstance(p, ClipPreprocess) and p(photo(90, 70)).shape == (3, 64, 64)
    cfg = load_config(None, ["model.vision.preprocess=timm", "model.vision.name=vit_large_patch16_224.augreg_in21k",
                             "data.image_aspect=pad"])
    p = build_image_processor(cfg.model.vision, cfg.data.image_aspect)
    assert isinstance(p, TimmPreprocess) and p.pad and p(photo(90, 70)).shape == (3, 224, 224)


def _original() -> Image.Image:
    """An 8-bit RGB picture with every level of every channel somewhere."""
    y, x = np.mgrid[0:48, 0:64]
    a = np.stack([(x * 4) % 256, (y * 5) % 256, (x * 3 + y * 2) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(a)


def _file_of_mode(mode: str, tmp_path) -> tuple:
    """(a file holding the original in `mode`, what its 8-bit RGB content must be)."""
    rgb = _original()
    gray = rgb.convert("L")
    g = np.asarray(gray)
    opaque = Image.new("L", rgb.size, 255)
    made = {
        "L": (gray, "png", gray),
        "I;16": (Image.fromarray(g.astype(np.uint16) * 257), "png", gray),  # a 16-bit PNG
        "I": (Image.fromarray(g.astype(np.int32) * 257), "tiff", gray),
        "F": (Image.fromarray(g.astype(np.float32) / 255), "tiff", gray),
        "LA": (Image.merge("LA", (gray, opaque)), "png", gray),
        "P": (rgb.quantize(256), "png", rgb),
        "RGBA": (Image.merge("RGBA", (*rgb.split(), opaque)), "png", rgb),
        "CMYK": (rgb.convert("CMYK"), "tiff", rgb),
        "1": (rgb.convert("1"), "png", rgb.convert("1")),
    }
    image, ext, expect = made[mode]
    path = tmp_path / f"im_{mode.replace(';', '')}.{ext}"
    image.save(path)
    with Image.open(path) as check:
        assert check.mode == mode or (mode == "I;16" and check.mode in ("I;16", "I")), check.mode
    return path, expect.convert("RGB")


@pytest.mark.parametrize("mode", ["L", "I;16", "I", "F", "LA", "P", "RGBA", "CMYK", "1"])
def test_every_image_mode_keeps_its_content(tmp_path, mode):
    path, expect = _file_of_mode(mode, tmp_path)
    got = np.asarray(load_image(path), dtype=np.int16)
    diff = np.abs(got - np.asarray(expect, dtype=np.int16))
    if mode == "P":  # 256 palette colours for a picture with more: quantisation error only
        assert diff.mean() < 4 and got.std() > 40, (diff.mean(), got.std())
    else:
        assert diff.max() <= (1 if mode == "F" else 0), diff.max()


def test_a_lab_image_is_refused_not_garbled(tmp_path):
    _original().convert("LAB").save(tmp_path / "lab.tiff")
    with pytest.raises(ValueError, match="mode LAB"):
        load_image(tmp_path / "lab.tiff")
