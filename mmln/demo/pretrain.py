"""The demo's stand-ins for pretrained models, made on a CPU in minutes and cached in the demo dir.

- `pretrain_vision_encoder`: a tiny CLIP-architecture vision tower (transformers' `CLIPVisionModel`)
  trained to name the colour and shape in each cell of drawn scenes: the stand-in for CLIP ViT-L/14.
- `pretrain_base_lm`: a tiny LLaMA-style tokenizer and base LM pretrained on grounded synthetic text
  (every question follows its scene's description), then `chat_tune`d on Vicuna-style chats: the
  stand-in for Vicuna, since LayerNorm tuning adapts a *pretrained* chat LLM.

Both are plain PyTorch loops (`train_loop`), not mmln's Lightning trainer: they only make the inputs
the demo's stages start from. `python -m mmln.demo --prepare-only` builds them (and the data) and stops.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

CONF = Path(__file__).resolve().parents[2] / "conf" / "demo"
HEARTBEAT_S = 30.0  # the longest a demo stage stays silent: a line with step k/n and an ETA at least this often


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_loop(params: list, loss_at: Callable[[], Any], steps: int, lr: float, label: str, log_every: int) -> float:
    """AdamW (no weight decay), 20 warmup steps then cosine to 0, grad-norm clip 1.0; `loss_at()`
    draws a batch and returns its loss. Returns the seconds it took."""
    import torch

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 20) * 0.5 * (1 + math.cos(math.pi * i / steps)))
    from mmln.base.progress import eta

    t0 = last = time.time()
    for step in range(steps):
        loss = loss_at()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(), sched.step(), opt.zero_grad()
        now = time.time()
        if step % log_every == 0 or step == steps - 1 or now - last >= HEARTBEAT_S:
            say(f"{label}: step {step + 1}/{steps} loss {loss.item():.3f} "
                f"({now - t0:.0f}s, ETA {eta(step + 1, steps, now - t0)})")
            last = now
    return time.time() - t0


def grounded_chats(n: int, seed: int = 0, yes_no: float = 0.0) -> list[list[tuple[str, str]]]:
    """Vicuna-style chats, [(human|gpt, text)], whose first user turn *describes* a scene in words.

    They play the role of Vicuna's chat data: the base LM learns to answer from context (the
    description), whose place the image's projected features later take. With probability
    `yes_no` the chat opens with a yes/no question (`synth.YES_NO_QA`), the kind MME and POPE ask,
    which a model this small learns slowest: checking a named colour, shape or count against the
    context rather than naming one.
    """
    import random

    from mmln.data.synth import YES_NO_QA, short_qa, caption, pick_qa, qa_turns, sample_scene, sentence

    out = []
    for i in range(n):
        rnd = random.Random(f"{seed}-chat-{i}")
        scene = sample_scene(rnd)
        qas = qa_turns(scene, rnd, rnd.randint(0 if yes_no else 1, 2 if yes_no else 3))
        if rnd.random() < yes_no:
            qas.insert(0, pick_qa(YES_NO_QA, scene, rnd))
        turns = []
        for k, qa in enumerate(qas or qa_turns(scene, rnd, 1)):
            q, a = short_qa(qa, rnd)
            turns += [("human", (rnd.choice((caption, sentence))(scene, rnd) + "\n" if k == 0 else "") + q), ("gpt", a)]
        out.append(turns)
    return out


def grounded_texts(n: int, seed: int = 0) -> list[str]:
    """Plain-text documents for pretraining: a scene's description, then several questions about it
    with their answers. Every answer is true of the description before it, so a model learns to
    answer from context (questions without context would teach it to guess from priors)."""
    import random

    from mmln.data.synth import short_qa, caption, describe, qa_turns, sample_scene, sentence

    out = []
    for i in range(n):
        rnd = random.Random(f"{seed}-text-{i}")
        scene = sample_scene(rnd)
        qas = [" ".join(short_qa(qa, rnd)) for qa in qa_turns(scene, rnd, rnd.randint(2, 8))]
        out.append(" ".join([rnd.choice((caption, sentence, describe))(scene, rnd), *qas]))
    return out


def pretrain_vision_encoder(root: Path, quick: bool, seed: int = 0) -> None:
    """The tiny CLIP-architecture vision tower, pretrained once and cached (the demo's stand-in for CLIP).

    A randomly initialised ViT's patch features barely separate colours and not shapes at all (a
    linear probe scores at or near the majority class), so no connector could learn from them. This teaches the tower
    what CLIP knows of this world: from the very features the MLLM uses (`select_layer`, CLS
    dropped), a linear head names the background and, for each cell of the 3 x 3 grid, the colour
    and the shape there (or none). Its images are freshly drawn scenes, none from the data sets.
    """
    import random

    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import CLIPVisionModel

    from mmln.config import load_config
    from mmln.data.images import build_image_processor
    from mmln.data.synth import BACKGROUNDS, COLORS, SHAPES, draw, sample_scene
    from mmln.model.vision import VisionEncoder, hf_clip_config

    out = root / "vision"
    if (out / "config.json").is_file():
        return say(f"vision encoder: cached in {out}")
    torch.manual_seed(seed)
    vcfg = load_config(CONF / "base.yaml", ["model.vision.path=null"]).model.vision
    backbone = CLIPVisionModel(hf_clip_config(vcfg))
    encoder, process = VisionEncoder(vcfg, backbone), build_image_processor(vcfg)
    colors, shapes, backgrounds = list(COLORS), list(SHAPES), list(BACKGROUNDS)
    n_images, steps, batch = (4000, 800, 64) if quick else (8000, 2000, 64)
    rnd, rng = random.Random(f"{seed}-vision"), np.random.default_rng(seed)
    pixels, targets = [], []
    for _ in range(n_images):
        scene = sample_scene(rnd)
        pixels.append(process(draw(scene, vcfg.image_size, rng)))
        cells = [[len(colors), len(shapes)] for _ in range(9)]  # "none" = the last class
        for o in scene.objects:
            cells[3 * o.row + o.col] = [colors.index(o.color), shapes.index(o.shape)]
        targets.append([backgrounds.index(scene.background)] + [c for cell in cells for c in cell])
    x, y = torch.stack(pixels), torch.tensor(targets)
    groups = [len(backgrounds)] + [len(colors) + 1, len(shapes) + 1] * 9
    head = torch.nn.Linear(encoder.num_patches * vcfg.hidden_size, sum(groups))
    backbone.requires_grad_(True)
    params = [*backbone.parameters(), *head.parameters()]
    backbone.train()

    def loss_at():
        rows = torch.randint(0, len(x), (batch,))
        feats = backbone(pixel_values=x[rows], output_hidden_states=True).hidden_states[vcfg.select_layer][:, 1:]
        logits = head(feats.flatten(1)).split(groups, dim=1)
        return sum(F.cross_entropy(lg, y[rows, k]) for k, lg in enumerate(logits)) / len(groups)

    seconds = train_loop(params, loss_at, steps, 2e-3, "vision encoder", 500)
    backbone.eval().save_pretrained(out)
    say(f"vision encoder: pretrained in {seconds:.0f}s on {n_images} drawn scenes, saved to {out}; "
        "held-out accuracy on the occupied cells: colour {:.1%}, shape {:.1%}".format(
            *_cell_accuracy(encoder, head, groups, process, vcfg.image_size, seed)))


def _cell_accuracy(encoder, head, groups: list[int], process, size: int, seed: int) -> tuple[float, float]:
    """How often the vision tower's head names the colour and the shape of an occupied cell, on new scenes."""
    import random

    import numpy as np
    import torch

    from mmln.data.synth import COLORS, SHAPES, draw, sample_scene

    rnd, rng = random.Random(f"{seed}-vision-heldout"), np.random.default_rng(seed + 1)
    scenes = [sample_scene(rnd) for _ in range(300)]
    with torch.no_grad():
        logits = head(encoder(torch.stack([process(draw(s, size, rng)) for s in scenes])).flatten(1)).split(groups, dim=1)
    hits = [(logits[1 + 2 * (3 * o.row + o.col)][i].argmax().item() == list(COLORS).index(o.color),
             logits[2 + 2 * (3 * o.row + o.col)][i].argmax().item() == list(SHAPES).index(o.shape))
            for i, s in enumerate(scenes) for o in s.objects]
    return tuple(sum(h) / len(hits) for h in zip(*hits))


def pretrain_base_lm(root: Path, quick: bool, seed: int = 0) -> None:
    """A 4-layer LLaMA (hidden 128): causal-LM pretraining on grounded texts (`grounded_texts`) and
    grounded chats, then chat tuning (`chat_tune`); saved with its tokenizer."""
    import random

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from mmln.data.synth import text_corpus
    from mmln.data.templates import render_segments
    from mmln.data.tokenizer import train_tiny_tokenizer

    out = root / "base_lm"
    if (out / "config.json").is_file():
        return say(f"base LM: cached in {out}")
    torch.manual_seed(seed)
    texts = grounded_texts(6000 if quick else 12000, seed=seed)
    chats = ["".join(t for t, _ in render_segments("vicuna_v1", c)) for c in grounded_chats(4000 if quick else 12000, seed)]
    train_tiny_tokenizer(text_corpus(6000, seed=seed) + texts + chats, out, vocab_size=1000)
    tok = AutoTokenizer.from_pretrained(out)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=0,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    docs = texts + chats
    random.Random(seed).shuffle(docs)
    ids = [t for s in docs for t in tok(s)["input_ids"] + [tok.eos_token_id]]
    seq, batch = 128, 32
    data = torch.tensor(ids[: len(ids) // seq * seq]).view(-1, seq)
    steps = 150 if quick else 400
    model.train()

    def loss_at():
        rows = torch.randint(0, data.shape[0], (batch,))
        return model(input_ids=data[rows], labels=data[rows]).loss

    seconds = train_loop(list(model.parameters()), loss_at, steps, 3e-3, "base LM", 100)
    say(f"base LM: pretrained in {seconds:.0f}s on {data.numel():,} tokens")
    chat_tune(model, tok, 300 if quick else 600, seed)
    model.save_pretrained(out)
    say(f"base LM: saved to {out}")


def chat_tune(model, tok, steps: int, seed: int = 0) -> None:
    """Vicuna's step for the tiny LM: supervised chat tuning, loss on the answers only, on grounded
    chats where 70% open with a yes/no question. Measured on text descriptions, yes/no answers
    stay weak (existence 54% after 600 steps, 63% after 1000; at lr 3e-3 they collapse to "Yes"):
    the demo's image grounding is learnt in stage 2 (docs/demo.md)."""
    import torch

    from mmln.data.dataset import pad_right
    from mmln.data.templates import render_segments, tokenize_segments

    data = [tokenize_segments(render_segments("vicuna_v1", c), tok)
            for c in grounded_chats(20000, seed + 1, yes_no=0.7)]
    model.train()

    def loss_at():
        batch = [data[i] for i in torch.randint(0, len(data), (32,)).tolist()]
        ids, mask, labels = pad_right([i for i, _ in batch], 0, [lab for _, lab in batch])
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss

    seconds = train_loop(list(model.parameters()), loss_at, steps, 5e-4, "base LM chat tuning (answer loss)", 250)
    say(f"base LM: chat-tuned in {seconds:.0f}s")
