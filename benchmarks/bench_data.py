"""Data-loading throughput: 224 px JPEGs + ~512-token vicuna_v1 conversations through the real
LlavaDataset + Collator, one DataLoader worker. Target: >= 80 samples/s per worker.

    python benchmarks/bench_data.py [--n 256] [--tokens 512] [--batch 16]

Prints one JSON line {"bench": "data_loading", "samples_per_s_per_worker": ..., "target": 80, ...}
and one human-readable line. Data and tokenizer are generated in a temp dir (nothing downloaded).
"""
from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmln.data import synth  # noqa: E402
from mmln.data.dataset import Collator, LlavaDataset  # noqa: E402
from mmln.data.images import ClipPreprocess  # noqa: E402
from mmln.data.records import read_records  # noqa: E402
from mmln.data.templates import TEMPLATES  # noqa: E402
from mmln.data.tokenizer import train_tiny_tokenizer  # noqa: E402

TARGET = 80.0


def photo_jpeg(path: Path, rng: np.random.Generator, w: int = 224, h: int = 224) -> None:
    y, x = np.mgrid[0:h, 0:w]
    phase = rng.uniform(0, 6.28, 3)
    a = np.stack([127 + 100 * np.sin(x / 23 + phase[0]), 127 + 100 * np.cos(y / 31 + phase[1]),
                  127 + 100 * np.sin((x + y) / 41 + phase[2])], -1) + rng.normal(0, 12, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue())


def make_data(root: Path, n: int, tokens: int, seed: int = 0) -> tuple[Path, Path, object]:
    from transformers import AutoTokenizer

    rng, rnd = np.random.default_rng(seed), random.Random(seed)
    corpus = synth.text_corpus(2000, seed=seed)
    tok_dir = train_tiny_tokenizer(corpus + [t.system for t in TEMPLATES.values()] + ["USER: ASSISTANT:"] * 50,
                                   root / "tok", vocab_size=2000, legacy=True)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    (root / "images").mkdir()
    sentences = synth.text_corpus(4000, seed=seed + 1)
    records = []
    for i in range(n):
        photo_jpeg(root / "images" / f"{i:012d}.jpg", rng)
        turns, n_tok = [], 0
        while n_tok < tokens - 60:  # leave room for the system prompt and role tags
            q, a = rnd.choice(sentences), rnd.choice(sentences)
            turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
            n_tok += len(tok(q + " " + a, add_special_tokens=False)["input_ids"]) + 8
        turns[0]["value"] = "<image>\n" + turns[0]["value"]
        records.append({"id": f"{i:012d}", "image": f"{i:012d}.jpg", "conversations": turns})
    (root / "data.json").write_text(json.dumps(records))
    return root / "data.json", root / "images", tok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=256, help="samples")
    p.add_argument("--tokens", type=int, default=512, help="approximate text tokens per conversation")
    p.add_argument("--batch", type=int, default=16)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data, images, tok = make_data(Path(tmp), a.n, a.tokens)
        ds = LlavaDataset(read_records([data], images), tok, template="vicuna_v1", image_processor=ClipPreprocess(224),
                          num_image_tokens=256, max_length=2048)
        collate = Collator(tok.pad_token_id)

        # per-sample cost breakdown, in this process
        for i in range(8):
            ds[i]
        t_text = t_img = 0.0
        n_ids = []
        for rec in ds.records:
            t0 = time.perf_counter()
            ids, _, _ = ds.encode_text(rec)
            t1 = time.perf_counter()
            ds.image_processor(ds.load_image(rec))
            t2 = time.perf_counter()
            t_text, t_img = t_text + (t1 - t0), t_img + (t2 - t1)
            n_ids.append(len(ids))
        samples = [ds[i] for i in range(a.batch)]
        t0 = time.perf_counter()
        for _ in range(20):
            collate(samples)
        t_collate = (time.perf_counter() - t0) / 20 / a.batch

        # the real thing: one DataLoader worker feeding collated batches
        loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, num_workers=1, collate_fn=collate,
                                             prefetch_factor=4)
        it = iter(loader)
        first = next(it)  # worker start-up excluded
        t0 = time.perf_counter()
        count = 0
        for batch in it:
            count += batch["input_ids"].shape[0]
        dt = time.perf_counter() - t0
        assert first["pixel_values"].shape[1:] == (3, 224, 224)
    rate = count / dt
    result = {
        "bench": "data_loading",
        "samples_per_s_per_worker": round(rate, 1),
        "target": TARGET,
        "ok": rate >= TARGET,
        "ms_per_sample": {"image_decode_preprocess": round(1000 * t_img / len(n_ids), 2),
                          "tokenize_mask": round(1000 * t_text / len(n_ids), 2),
                          "collate": round(1000 * t_collate, 3)},
        "text_tokens_mean": round(sum(n_ids) / len(n_ids), 1),
        "samples": a.n, "batch": a.batch, "image_px": 224, "template": "vicuna_v1",
    }
    print(json.dumps(result))
    ms = result["ms_per_sample"]
    print(f"data loading: {rate:.1f} samples/s per worker (target {TARGET:.0f}); per sample "
          f"{ms['image_decode_preprocess']:.2f} ms image decode+preprocess, {ms['tokenize_mask']:.2f} ms "
          f"tokenize+mask, {ms['collate']:.3f} ms collate; {result['text_tokens_mean']:.0f} text tokens on average",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
