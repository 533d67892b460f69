"""Cost of the analysis callbacks (LayerNorm gradients + layer similarity) at their default frequency.

Two real `mmln.fit` runs of stage 2 (layernorm) on synthetic data, identical but for `analysis.*`:
one with the callbacks off, one with the defaults (gradients of 4 norms every 10 optimizer steps,
similarity on 32 fixed samples at the end). LLaMA hidden 256 / 4 layers, 150 optimizer steps.
Each configuration runs twice, alternating; the faster of the two counts (a shared CPU is noisy).
Prints JSON lines and a summary; the issue asks for under 5% added to a training step:
    python benchmarks/bench_analysis.py
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MMLN_QUIET", "1")

STEPS = 150
NORMS = "[layers.1.input_layernorm,layers.1.post_attention_layernorm,layers.2.input_layernorm,layers.2.post_attention_layernorm]"


def main() -> int:
    from mmln.config import load_config
    from mmln.data.synth import synthesize, text_corpus
    from mmln.data.tokenizer import train_tiny_tokenizer
    from mmln.fit import fit

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        synthesize(tmp / "data", image_size=64, n_pretrain=16, n_instruct=400, n_mme_per_subtask=1,
                   n_pope_images=2, n_vqa_images=2, n_caption_images=2, seed=0)
        tok = train_tiny_tokenizer(text_corpus(2000, seed=0), tmp / "tok", vocab_size=1000)
        base = [f"model.llm.tokenizer={tok}", "model.llm.hidden_size=256", "model.llm.intermediate_size=688",
                "model.llm.num_layers=4", "model.llm.vocab_size=1000", "stage=instruct", "tune.strategy=layernorm",
                "data.template=vicuna_v1", f"data.train.files=[{tmp / 'data/llava_instruct/llava_instruct_150k.json'}]",
                f"data.train.image_folder={tmp / 'data/coco/train2017'}", "data.num_workers=0",
                f"train.max_steps={STEPS}", "train.global_batch_size=8", "train.micro_batch_size=8",
                "train.save_every_n_steps=1000", f"output_dir={tmp / 'out'}", "quiet=true"]
        variants = {"off": ["analysis.grad_every_n_steps=0", "analysis.similarity=false"],
                    "default": [f"analysis.grad_norms={NORMS}"]}
        best: dict[str, dict] = {}
        for rep in range(2):
            for name, extra in variants.items():
                m = fit(load_config(ROOT / "conf/model/tiny.yaml", base + extra + [f"run_name={name}-{rep}"])).metrics
                row = {"step_s": m["perf/micro_step_s"], "wall_s": m["train/wall_s"]}
                if name not in best or row["wall_s"] < best[name]["wall_s"]:
                    best[name] = row
    off, on = best["off"], best["default"]
    result = {"bench": "analysis_overhead", "steps": STEPS, "step_s_off": round(off["step_s"], 4),
              "step_s_default": round(on["step_s"], 4), "wall_s_off": round(off["wall_s"], 2),
              "wall_s_default": round(on["wall_s"], 2),
              "step_overhead_pct": round(100 * (on["step_s"] / off["step_s"] - 1), 2),
              "run_overhead_pct": round(100 * (on["wall_s"] / off["wall_s"] - 1), 2)}
    # the similarity pass is a fixed cost at the end: what the run added beyond its per-step share
    result["similarity_pass_s"] = round(on["wall_s"] - off["wall_s"] - STEPS * (on["step_s"] - off["step_s"]), 2)
    print(json.dumps(result))
    print(f"# analysis callbacks at default frequency: {result['step_overhead_pct']:+.1f}% per training step, "
          f"{result['run_overhead_pct']:+.1f}% on the whole {STEPS}-step run, of which the one-off similarity pass "
          f"~{result['similarity_pass_s']:.1f}s (target < 5% per step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
