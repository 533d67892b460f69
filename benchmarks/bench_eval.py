"""Evaluation speed on the tiny model and synthetic MME questions (CPU unless a GPU is there).

Prints JSON lines, then one human line:
  {"bench": "eval_batched_vs_single", "batched_qps", "single_qps", "ratio", ...}
      batched KV-cache generation (eval.batch_size questions per call) vs one question per call
  {"bench": "eval_logits_vs_generate", "logits_qps", "generate_qps", "ratio", ...}
      yes/no answers from the next-token logits vs batched generation (same batch size)
On CPU the model runs on one thread and the figures are questions per CPU-second (stable on a
shared machine); on a GPU, questions per wall-clock second. Every sequence decodes the full `--max-new-tokens` (a random model never emits EOS): the
generation side is an upper bound on the cost of a real run, where answers stop at EOS.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmln.config import load_config  # noqa: E402
from mmln.data.images import build_image_processor  # noqa: E402
from mmln.data.synth import synthesize, text_corpus  # noqa: E402
from mmln.eval.mme import read_mme  # noqa: E402
from mmln.data.tokenizer import train_tiny_tokenizer  # noqa: E402
from mmln.eval.benchmarks import short_answer  # noqa: E402
from mmln.eval.runner import Query, Runner, decoding_for, human  # noqa: E402
from mmln.model import build_mllm  # noqa: E402
from mmln.model.llm import load_tokenizer  # noqa: E402


def qps(fn, queries, clock, repeats: int = 2) -> float:
    """Questions per second of `clock`, best of `repeats` timed runs after one warm-up run
    (first-call kernel setup for these shapes)."""
    fn(queries)
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn(queries)
        best = min(best, clock() - t0)
    return len(queries) / best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    a = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = synthesize(Path(tmp) / "data", image_size=64, n_pretrain=0, n_instruct=0,
                           n_mme_per_subtask=max(1, a.questions // 28 + 1), n_pope_images=1,
                           n_vqa_images=1, n_caption_images=1)
        tok = train_tiny_tokenizer(text_corpus(2000) + ["Yes. No."] * 300, Path(tmp) / "tok", vocab_size=500)
        cfg = load_config(ROOT / "conf/model/tiny.yaml",
                          [f"model.llm.tokenizer={tok}", f"eval.max_new_tokens={a.max_new_tokens}"])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":  # one thread, CPU time: stable figures on a shared machine
            torch.set_num_threads(1)
        clock = time.perf_counter if device == "cuda" else time.process_time
        mllm = build_mllm(cfg.model).eval().to(device)
        tokenizer, images = load_tokenizer(cfg.model.llm), build_image_processor(cfg.model.vision)
        rows = read_mme(paths["mme_root"])[: a.questions]
        queries = [Query([human("<image>\n" + short_answer(r.question))], r.image) for r in rows]

        def runner(bs: int) -> Runner:
            return Runner(mllm, tokenizer, images, decoding_for(cfg), batch_size=bs)

        batched, single = runner(a.batch_size), runner(1)
        b_qps, s_qps = qps(batched.generate, queries, clock), qps(single.generate, queries, clock)
        l_qps = qps(batched.answer_yes_no, queries, clock)
    common = {"device": device, "clock": "wall" if device == "cuda" else "cpu-1-thread", "questions": len(queries), "batch_size": a.batch_size,
              "max_new_tokens": a.max_new_tokens, "model": "tiny"}
    print(json.dumps({"bench": "eval_batched_vs_single", "batched_qps": round(b_qps, 2),
                      "single_qps": round(s_qps, 2), "ratio": round(b_qps / s_qps, 2), **common}))
    print(json.dumps({"bench": "eval_logits_vs_generate", "logits_qps": round(l_qps, 2),
                      "generate_qps": round(b_qps, 2), "ratio": round(l_qps / b_qps, 2), **common}))
    print(f"eval on {device}: batched generation {b_qps:.1f} q/s vs one at a time {s_qps:.1f} q/s "
          f"(x{b_qps / s_qps:.1f}); yes/no from logits {l_qps:.1f} q/s vs generation (x{l_qps / b_qps:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
