"""python -m mmln.demo — the whole pipeline on a tiny model and synthetic data, on a CPU, in minutes.

1. synthesize the data sets in their real on-disk formats (`mmln.data.synth`), 64-px images;
2. train a tiny LLaMA-style tokenizer and pretrain a tiny base LM on synthetic text (LayerNorm
   tuning adapts a *pretrained* LLM, so the demo makes one first; both are cached in the demo dir);
3. stage 1: pretrain the connector (`conf/demo/stage1.yaml`);
4. stage 2: LayerNorm tuning (`conf/demo/stage2.yaml`);
5. evaluate the model before stage 2 ("untuned": base LM + stage-1 connector) and after it on the
   synthetic MME, POPE, VQAv2, COCO and Flickr30k benchmarks, and print the table.
Everything is tracked in the local MLflow store (`make ui`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

CONF = Path(__file__).resolve().parent.parent / "conf" / "demo"
BENCHES = ["mme", "pope", "vqav2", "coco", "flickr30k"]


def demo_dir() -> Path:
    return Path(os.environ.get("MMLN_DEMO_DIR", "demo"))


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_data(root: Path, quick: bool) -> None:
    from mmln.data.synth import synthesize

    if (root / "data" / ".done").is_file():
        return say(f"data: cached in {root / 'data'}")
    sizes = dict(n_pretrain=1200, n_instruct=300, n_mme_per_subtask=6, n_pope_images=20, n_vqa_images=30,
                 n_caption_images=40) if quick else {}
    synthesize(root / "data", image_size=64, seed=0, **sizes)
    (root / "data" / ".done").write_text("ok\n")
    say(f"data: synthesized in {root / 'data'}")


def pretrain_base_lm(root: Path, quick: bool, seed: int = 0) -> None:
    """A 4-layer LLaMA (hidden 128) trained as a plain causal LM on synthetic sentences, saved with its tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from mmln.data.synth import text_corpus
    from mmln.data.tokenizer import train_tiny_tokenizer

    out = root / "base_lm"
    if (out / "config.json").is_file():
        return say(f"base LM: cached in {out}")
    torch.manual_seed(seed)
    texts = text_corpus(6000 if quick else 20000, seed=seed)
    train_tiny_tokenizer(texts, out, vocab_size=1000)
    tok = AutoTokenizer.from_pretrained(out)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=0,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    ids = [t for s in texts for t in tok(s)["input_ids"] + [tok.eos_token_id]]
    seq, batch = 128, 32
    data = torch.tensor(ids[: len(ids) // seq * seq]).view(-1, seq)
    steps = 120 if quick else 300
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    t0 = time.time()
    for step in range(steps):
        rows = torch.randint(0, data.shape[0], (batch,))
        loss = model(input_ids=data[rows], labels=data[rows]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            say(f"base LM: step {step + 1}/{steps} loss {loss.item():.3f}")
    model.save_pretrained(out)
    say(f"base LM: pretrained in {time.time() - t0:.0f}s on {data.numel():,} tokens, saved to {out}")


def table(rows: dict[str, dict]) -> str:
    cols = [("MME-P", "eval/mme_perception", "{:.1f}"), ("MME-C", "eval/mme_cognition", "{:.1f}"),
            ("VQAv2", "eval/vqav2", "{:.1f}"), ("COCO", "eval/coco_cider", "{:.1f}"),
            ("Flickr", "eval/flickr30k_cider", "{:.1f}"), ("POPE-r acc", "eval/pope_random_accuracy", "{:.1f}"),
            ("POPE-p acc", "eval/pope_popular_accuracy", "{:.1f}"), ("POPE-a acc", "eval/pope_adversarial_accuracy", "{:.1f}")]
    lines = ["model".ljust(22) + "".join(c[0].rjust(12) for c in cols)]
    for name, m in rows.items():
        lines.append(name.ljust(22) + "".join(
            (fmt.format(m[key]) if key in m else "-").rjust(12) for _, key, fmt in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmln.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller data and fewer steps (used by the slow test)")
    ap.add_argument("--fresh", action="store_true", help="delete the demo dir's runs first (keeps data and base LM)")
    ap.add_argument("--strict", action="store_true", help="exit 1 unless the tuned model beats the untuned one and chance")
    args = ap.parse_args(argv)

    from mmln.config import load_config
    from mmln.evaluate import evaluate
    from mmln.fit import fit

    t_start = time.time()
    root = demo_dir()
    root.mkdir(parents=True, exist_ok=True)
    if args.fresh and (root / "outputs").exists():
        import shutil

        shutil.rmtree(root / "outputs")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path('mlflow.db').resolve()}")
    make_data(root, args.quick)
    pretrain_base_lm(root, args.quick)
    quick = ["train.epochs=1"] if args.quick else []

    say("stage 1: pretraining the connector")
    s1 = fit(load_config(CONF / "stage1.yaml", quick), str(CONF / "stage1.yaml"))
    say(f"stage 1 done: {s1.run_dir}")
    say("stage 2: LayerNorm tuning")
    s2cfg = load_config(CONF / "stage2.yaml", quick)
    s2 = fit(s2cfg, str(CONF / "stage2.yaml"))
    say(f"stage 2 done: {s2.run_dir}  ({s2.metrics.get('perf/tokens_per_s', 0):,.0f} tokens/s, "
        f"{s2.metrics['params/trainable']:,} of {s2.metrics['params/total']:,} parameters trained)")

    limit = ["eval.limit=200"] if args.quick else []
    say("evaluating the untuned model (base LM + stage-1 connector)")
    untuned = evaluate(load_config(CONF / "stage2.yaml", limit), None, BENCHES, s2.run_dir / "eval_untuned")["metrics"]
    say("evaluating the LayerNorm-tuned model")
    tuned = evaluate(load_config(CONF / "stage2.yaml", limit), str(s2.run_dir / "trainable.safetensors"), BENCHES,
                     s2.run_dir / "eval", run_id=s2.run_id)["metrics"]
    rows = {"chance": {"eval/mme_perception": 100.0 * 10 * 0.75, "eval/mme_cognition": 100.0 * 4 * 0.75,
                       **{f"eval/pope_{s}_accuracy": 50.0 for s in ("random", "popular", "adversarial")}},
            "untuned (stage 1)": untuned, "layernorm (stage 2)": tuned}
    print("\n" + table(rows))
    print("(MME-P/MME-C: sum of 100*(acc + acc+) over subtasks; chance answers at random: acc 0.5, acc+ 0.25)")
    ok = all(tuned.get(k, 0) > max(untuned.get(k, 0), rows["chance"][k]) for k in
             ("eval/pope_random_accuracy", "eval/mme_perception"))
    verdict = "the tuned model beats the untuned one and chance on POPE and MME" if ok else \
        "WARNING: the tuned model does not beat the untuned one and chance on POPE and MME"
    print(f"\n{verdict}.\nDemo took {time.time() - t_start:.0f}s. Runs: {root / 'outputs'}; "
          f"MLflow: {os.environ['MLFLOW_TRACKING_URI']} -> `make ui` and open http://127.0.0.1:5000")
    (root / "demo_results.json").write_text(json.dumps(rows, indent=1))
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
