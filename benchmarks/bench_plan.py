"""The memory planner's CPU check: `mmln.plan`'s predicted extra bytes of one steady-state optimizer
step against the peak measured by mmln.base.memtrack.PeakMemory (fp32 on CPU; a 3-layer LLaMA of hidden
128, vocab 4,000, micro-batch 2 x 192 positions, loss in chunks of 128), per strategy, checkpointing
on and off; target: within 15%. Then the planner's Table-2 figures at 7B and 13B (predicted: a
simulated step on the meta device). Prints JSON lines: python benchmarks/bench_plan.py
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmln.config import load_config  # noqa: E402
from mmln.plan import cpu_check, main as plan_main  # noqa: E402

MODEL = ["model.llm.hidden_size=128", "model.llm.intermediate_size=344", "model.llm.num_layers=3",
         "model.llm.vocab_size=4000", "model.max_length=512", "model.dtype=float32", "model.loss_chunk=128"]


def main() -> int:
    import torch

    torch.set_num_threads(2)
    cfg = load_config(ROOT / "conf/model/tiny.yaml", MODEL)
    for strategy in ("layernorm_simple", "layernorm", "lora", "finetune"):
        for ckpt in (False, True):
            predicted, measured = cpu_check(cfg, strategy, micro_batch=2, seq_len=192, checkpointing=ckpt)
            ratio = predicted / measured
            print(json.dumps({"bench": "plan_cpu_check", "strategy": strategy, "checkpointing": ckpt,
                              "predicted_mib": round(predicted / 2**20, 2), "measured_mib": round(measured / 2**20, 2),
                              "ratio": round(ratio, 3), "within_15pct": abs(ratio - 1) <= 0.15}), flush=True)
    t0 = time.perf_counter()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        plan_main(["--table2", "--json"])
    for row in json.loads(buf.getvalue()):
        print(json.dumps({"bench": "plan_table2", **row, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
