"""`mmln.load(config, ckpt).ask(image, question)` and `python -m mmln.predict` on the tiny model."""
from __future__ import annotations

import pytest
import torch

import mmln
from tests.conftest import TINY


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny LayerNorm-tuned checkpoint (perturbed tuned tensors) and two synthetic COCO images."""
    from mmln.config import load_config
    from mmln.data.synth import synthesize, text_corpus
    from mmln.data.tokenizer import train_tiny_tokenizer
    from mmln.model import build_mllm
    from mmln.model.checkpoint import save_trainable
    from mmln.tuning import apply_strategy

    root = tmp_path_factory.mktemp("api")
    paths = synthesize(root / "data", image_size=64, n_pretrain=0, n_instruct=0, n_mme_per_subtask=1,
                       n_pope_images=2, n_vqa_images=2, n_caption_images=2)
    tok = train_tiny_tokenizer(text_corpus(1000), root / "tok", vocab_size=400)
    ovr = [f"model.llm.tokenizer={tok}", "model.llm.vocab_size=400", "tune.strategy=layernorm",
           "eval.max_new_tokens=6", "eval.batch_size=4"]
    cfg = load_config(TINY, ovr)
    torch.manual_seed(cfg.train.seed)  # as mmln.load builds it: the same random frozen weights
    m = build_mllm(cfg.model)
    apply_strategy(m, cfg.tune)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    ckpt = save_trainable(m, root / "run" / "trainable.safetensors")
    images = sorted(paths["coco_val2014"].glob("*.jpg"))[:2]
    return dict(ovr=ovr, ckpt=ckpt, images=images, model=m)


def test_load_and_ask_single_and_batched(trained):
    from PIL import Image

    model = mmln.load(str(TINY), trained["ckpt"], trained["ovr"])
    tuned = {n: p for n, p in model.mllm.named_parameters() if "norm" in n}
    ref = dict(trained["model"].named_parameters())
    assert tuned and all(torch.equal(p, ref[n]) for n, p in tuned.items())  # the checkpoint's tensors, loaded
    a, b = trained["images"]
    qs = ["What colour is the shape?", "How many shapes are there?"]
    one = [model.ask(a, qs[0]), model.ask(b, qs[1])]
    assert all(isinstance(x, str) for x in one)
    assert model.ask([a, b], qs) == one  # batched == one at a time (greedy, left-padded)
    assert model.ask(Image.open(a), qs[0]) == one[0]  # a PIL image works as a path does
    assert len(model.ask(a, qs)) == 2  # one image for every question
    with pytest.raises(ValueError, match="2 images for 3 questions"):
        model.ask([a, b], qs + ["?"])


def test_predict_cli_prints_the_api_answers(trained, capsys, tmp_path):
    from mmln.predict import main

    a, b = trained["images"]
    qs = ["What colour is the shape?", "How many shapes are there?"]
    expected = mmln.load(str(TINY), trained["ckpt"], trained["ovr"]).ask([a, b], qs)
    assert main(["--config", str(TINY), "--ckpt", str(trained["ckpt"]), "--image", str(a), "--image", str(b),
                 "--question", qs[0], "--question", qs[1], *trained["ovr"]]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    assert main(["--config", str(TINY), "--ckpt", str(tmp_path / "nope.safetensors"), "--image", str(a),
                 "--question", "?", *trained["ovr"]]) == 2
    assert "no such file" in capsys.readouterr().err


def test_an_oversized_image_is_one_error_line_before_anything_is_decoded(trained, capsys, tmp_path):
    from PIL import Image

    from mmln.data.images import ImageTooLargeError
    from mmln.predict import main

    wide, pad = tmp_path / "wide.png", tmp_path / "pad.png"
    Image.new("RGB", (600_000, 1), (200, 10, 10)).save(wide, optimize=True)  # 1.8 KB
    Image.new("RGB", (20_000, 1), (200, 10, 10)).save(pad, optimize=True)  # 143 bytes
    a = trained["images"][0]
    argv = ["--config", str(TINY), "--ckpt", str(trained["ckpt"]), "--question", "?"]
    assert main([*argv, "--image", str(wide), *trained["ovr"]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(wide) in err and "600000x1" in err and "data.max_image_aspect=100" in err
    # the pad-to-square canvas alone (aspect limit lifted): 20000^2 pixels asked for, refused
    assert main([*argv, "--image", str(pad), *trained["ovr"], "data.image_aspect=pad", "data.max_image_aspect=1e9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "20000x1 padded to square" in err and "data.max_padded_pixels" in err
    model = mmln.load(str(TINY), trained["ckpt"], trained["ovr"] + ["data.max_image_pixels=1000"])
    with pytest.raises(ImageTooLargeError, match="data.max_image_pixels=1000"):
        model.ask([a, Image.new("RGB", (50, 50))], ["?", "?"])  # a decoded image is checked too
    assert model.ask(Image.new("RGB", (30, 30)), "?")  # within the limits: answered
