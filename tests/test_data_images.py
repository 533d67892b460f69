"""Image loading and CLIP / timm preprocessing against transformers' and timm's own code."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from test_data_helpers import tok_dirs, toks  # noqa: F401  (fixtures)

from mmln.config import load_config
from mmln.data.images import (
    CLIP_MEAN,
    CLIP_STD,
    PAD_COLOR,
    ClipPreprocess,
    TimmPreprocess,
    ImageLimits,
    ImageTooLargeError,
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


# ------------------------------------------------------------------------------------ bounded cost
def _extreme_pngs(folder) -> dict:
    """Tiny real PNG files whose headers promise expensive images: 600000x1 (its shortest-side resize to
    224 px is 134400000x224, ~90 GB) and 20000x1 (a 20000x20000 canvas padded to square, 1.2 GB)."""
    out = {}
    for name, size in (("wide", (600_000, 1)), ("pad", (20_000, 1))):
        out[name] = folder / f"{name}.png"
        Image.new("RGB", size, (200, 10, 10)).save(out[name], optimize=True)
        assert out[name].stat().st_size < 2000, out[name].stat().st_size
    return out


# A fresh interpreter: its address space is capped a little above what it holds once imports are done, so
# an image decoded or resized at its header's size fails with MemoryError instead of exhausting the machine;
# it prints the growth of its peak RSS (kB) and, per file, the error the image path raised.
_BOUNDED = """
import json, resource, sys
from PIL import Image
from mmln.data.images import ClipPreprocess, ImageLimits, load_image
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (768 << 20), resource.RLIM_INFINITY))
rss0, out = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, []
for path, pad, aspect in json.loads(sys.argv[1]):
    proc = ClipPreprocess(224, pad=pad, limits=ImageLimits(max_aspect=aspect))
    try:
        proc(load_image(path, proc.limits, proc.pad))
        out.append("decoded")
    except Exception as e:
        out.append(type(e).__name__ + ": " + str(e))
print(json.dumps({"rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0, "out": out}))
"""


def test_extreme_images_are_refused_from_the_header_with_memory_bounded(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    f = _extreme_pngs(tmp_path)
    cases = [(str(f["wide"]), False, 100.0), (str(f["pad"]), True, 100.0),
             (str(f["pad"]), True, 1e9)]  # aspect unbounded: the pad canvas limit alone refuses it
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", _BOUNDED, json.dumps(cases)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    wide, pad, canvas = got["out"]
    assert wide.startswith("ImageTooLargeError") and "600000x1" in wide and "data.max_image_aspect=100" in wide
    assert pad.startswith("ImageTooLargeError") and "20000x1" in pad and "data.max_image_aspect" in pad
    assert canvas.startswith("ImageTooLargeError") and "padded to square is 400000000 pixels" in canvas
    assert "data.max_padded_pixels=64000000" in canvas
    assert got["rss_kb"] < 20_000, got  # nothing near the image's decoded size (1.8 MB) was ever allocated


def test_image_limits_each_refuse_what_they_bound_and_nothing_else(tmp_path):
    limits = ImageLimits(max_pixels=1000, max_aspect=4, max_padded_pixels=900)
    limits.check((40, 25))  # 1000 pixels, aspect 1.6: within every limit
    limits.check((40, 10))  # aspect 4 exactly; the canvas is not asked for without pad
    with pytest.raises(ImageTooLargeError, match="data.max_image_pixels=1000"):
        limits.check((41, 25))
    with pytest.raises(ImageTooLargeError, match="data.max_image_aspect=4"):
        limits.check((41, 10))
    with pytest.raises(ImageTooLargeError, match="data.max_padded_pixels=900"):
        limits.check((31, 30), pad=True)
    limits.check((30, 30), pad=True)
    # defaults: an ordinary photo and LLaVA's square crops go through unchanged
    Image.new("RGB", (640, 480)).save(tmp_path / "ok.png")
    assert load_image(tmp_path / "ok.png").size == (640, 480)
    img = photo(640, 480)
    assert torch.equal(ClipPreprocess(224)(img), ClipPreprocess(224, limits=ImageLimits())(img))
    # an image handed in already decoded is checked before it is resized or padded
    with pytest.raises(ImageTooLargeError, match="data.max_image_aspect"):
        ClipPreprocess(64)(Image.new("RGB", (6000, 2)))
    cfg = load_config(None, ["data.max_image_aspect=3", "data.image_aspect=pad", "model.vision.image_size=64"])
    p = build_image_processor(cfg.model.vision, cfg.data.image_aspect, ImageLimits.of(cfg.data))
    with pytest.raises(ImageTooLargeError, match="data.max_image_aspect=3"):
        p(photo(90, 20))


def test_an_oversized_image_is_a_counted_bad_sample(tmp_path, toks):
    import json

    from mmln.data.dataset import BadSampleError, BadSampleLog, Collator, LlavaDataset
    from mmln.data.records import read_records

    f = _extreme_pngs(tmp_path)
    photo(80, 60).save(tmp_path / "ok.png")
    conv = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A shape."}]
    recs = [{"id": name, "image": f"{name}.png", "conversations": conv} for name in ("ok", "wide", "pad")]
    (tmp_path / "recs.json").write_text(json.dumps(recs))
    records = read_records([tmp_path / "recs.json"], tmp_path)
    tok = toks[True]
    ds = LlavaDataset(records, tok, template="vicuna_v1", num_image_tokens=16,
                      image_processor=ClipPreprocess(64, pad=True))
    samples = [ds[i] for i in range(len(ds))]
    assert [s.get("bad") for s in samples] == [None, "image_too_large", "image_too_large"]
    assert "600000x1" in samples[1]["detail"] and "20000x1" in samples[2]["detail"]
    log = BadSampleLog()
    log.update(Collator(0)(samples))
    assert log.as_dict() == {"image_too_large": 2} and "wide, pad" in log.summary()
    assert ds.check(1)[0] == "image_too_large"
    strict = LlavaDataset(records[1:], tok, template="vicuna_v1", num_image_tokens=16,
                          image_processor=ClipPreprocess(64), on_bad_sample="error")
    with pytest.raises(BadSampleError, match=r"record id 'wide'.*image_too_large"):
        strict[0]
