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
