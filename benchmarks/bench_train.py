"""Training-step efficiency per strategy on one tiny-but-not-trivial CPU model and batch.

Each strategy runs in its own process (clean peak-RSS), on the real MLLM with the real strategy
registry: AdamW step over the trainable parameters, batch of 4 x (16 image + 496 text) tokens,
LLaMA hidden 512 / 4 layers / MLP 1376 / vocab 8000. Reports the median step time, tokens/s,
peak RSS, and the step-time ratio to full finetuning. LayerNorm tuning skips every weight-gradient
matmul, so its ratio should be near the compute floor of ~2/3 (the issue asks ~0.7x).
Prints one JSON line per strategy and a summary line: python benchmarks/bench_train.py
"""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time

STRATEGIES = ["finetune", "lora", "layernorm", "layernorm_simple"]
MODEL = ["model.llm.hidden_size=512", "model.llm.intermediate_size=1376", "model.llm.num_layers=4",
         "model.llm.num_heads=8", "model.llm.vocab_size=8000", "model.max_length=512", "model.dtype=float32"]
BATCH, TEXT, STEPS, WARMUP = 4, 496, 8, 2


def one(strategy: str) -> dict:
    import torch

    from mmln.config import load_config
    from mmln.model import build_mllm
    from mmln.tuning import apply_strategy, count_params
    from pathlib import Path

    torch.manual_seed(0)
    torch.set_num_threads(2)
    tiny = Path(__file__).resolve().parent.parent / "conf" / "model" / "tiny.yaml"
    cfg = load_config(tiny, MODEL + [f"tune.strategy={strategy}"])
    m = build_mllm(cfg.model).train()
    apply_strategy(m, cfg.tune)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(3, 8000, (BATCH, TEXT + 1))
    ids[:, 0], ids[:, 1] = 1, -200
    labels = ids.clone()
    labels[:, :2] = -100
    px = torch.randn(BATCH, 3, 64, 64)
    times = []
    for step in range(STEPS + WARMUP):
        t0 = time.perf_counter()
        out = m(ids, None, labels, pixel_values=px)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= WARMUP:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tokens = BATCH * (TEXT + m.vision.num_patches)
    c = count_params(m)
    return {"bench": "train_step", "strategy": strategy, "step_s": round(step_s, 4),
            "tokens_per_s": round(tokens / step_s, 1), "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            "trainable": c.trainable, "total": c.total}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2])))
        return 0
    rows = []
    for s in STRATEGIES:
        out = subprocess.run([sys.executable, __file__, "--one", s], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    full = next(r for r in rows if r["strategy"] == "finetune")["step_s"]
    for r in rows:
        r["ratio_to_finetune"] = round(r["step_s"] / full, 3)
        print(json.dumps(r))
    ln = next(r for r in rows if r["strategy"] == "layernorm")["ratio_to_finetune"]
    print("# step time vs finetune: " + ", ".join(f"{r['strategy']} {r['ratio_to_finetune']:.2f}x" for r in rows)
          + f"  (target for layernorm: ~0.7x, compute floor 2/3; measured {ln:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
