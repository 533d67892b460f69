"""python -m mmln.demo — the whole pipeline on a tiny model and synthetic data, on a CPU, in minutes.

1. synthesize the data sets in their real on-disk formats (`mmln.data.synth`), 64-px images;
2. pretrain a tiny CLIP-architecture vision tower to name the colours and shapes in drawn scenes
   (the stand-in for CLIP), train a tiny LLaMA-style tokenizer, pretrain a tiny base LM on
   synthetic text and chat-tune it (LayerNorm tuning adapts a *pretrained* chat LLM, so the demo
   makes one first); all three are cached in the demo dir. Steps 1-2 are `mmln.demo.pretrain`, and
   `--prepare-only` stops after them;
3. stage 1: pretrain the connector (`conf/demo/stage1.yaml`);
4. stage 2: LayerNorm tuning (`conf/demo/stage2.yaml`) on LLaVA-1.5-style one-word VQA records
   (`short_answer_vqa.json`: the benchmarks' answer format, which this tiny LM does not pick up
   from LLaVA-Instruct's long answers; measured in docs/demo.md);
5. evaluate the model before stage 2 ("untuned": base LM + stage-1 connector) and after it on the
   synthetic MME, POPE, VQAv2, COCO and Flickr30k benchmarks, and print the table;
6. with `--compare`, the paper's comparison in miniature: `layernorm`, `layernorm_simple`, `lora` and
   `finetune` trained by the same stage-2 recipe from the same stage-1 connector, each at the learning
   rate a successive-halving sweep on the demo chose for it (`mmln.demo.compare.COMPARE`, recorded by
   `mmln.demo.lrsweep`), one table of trainable share, peak memory, step time, scores, layer
   similarity and LayerNorm-gradient variance (four more stage-2 runs and evaluations).
Everything is tracked in the local MLflow store (`make ui`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from mmln.demo.pretrain import pretrain_base_lm, pretrain_vision_encoder, say
from mmln.demo.stages import CHANCE, dashboard, evaluate_both, make_data, prepare_dir, setup_env, train_stages
from mmln.base.io import write_json


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m mmln.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller data and fewer steps (used by the slow test)")
    ap.add_argument("--fresh", action="store_true", help="delete the demo dir's runs first (keeps data and base LM)")
    ap.add_argument("--strict", action="store_true", help="exit 1 unless the tuned model beats the untuned one and chance")
    ap.add_argument("--compare", action="store_true",
                    help="also train layernorm, layernorm_simple, lora and finetune the same way, each at the learning "
                         "rate the demo's halving sweep chose (mmln.demo.compare.COMPARE), and print the comparison")
    ap.add_argument("--prepare-only", action="store_true",
                    help="make the data, vision tower, tokenizer and base LM (cached in the demo dir), then stop")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return run(args)
    except Exception as e:  # bad input (e.g. a demo dir copied from elsewhere): one line, as mmln.fit says it
        from mmln.fit import error_line

        if (said := error_line(e)) is None:
            raise
        print(f"mmln.demo: {said[0]}", file=sys.stderr)
        return said[1]


def run(args: argparse.Namespace) -> int:
    from mmln.demo.compare import compare, print_comparison
    from mmln.demo.tables import judge, table

    t_start = time.time()
    root = prepare_dir(args.quick, args.fresh, args.prepare_only)
    setup_env()
    make_data(root, args.quick)
    pretrain_vision_encoder(root, args.quick)
    pretrain_base_lm(root, args.quick)
    if args.prepare_only:
        say(f"prepared {root}: data, vision tower, tokenizer and base LM")
        return 0
    s2, s2cfg = train_stages(args.quick)
    untuned, tuned = evaluate_both(s2, args.quick)
    rows = {"chance": CHANCE, "untuned (stage 1)": untuned, "layernorm (stage 2)": tuned}
    print("\n" + table(rows))
    print("(MME-P/MME-C: sum of 100*(acc + acc+) over subtasks; chance answers at random: acc 0.5, acc+ 0.25)")
    verdict, ok = judge(tuned, untuned, CHANCE)
    if args.compare:
        rows["comparison"] = compare(s2, s2cfg.train.lr, tuned, args.quick)
        print_comparison(rows["comparison"], untuned, CHANCE)
    print(f"\n{verdict}.\nDemo took {time.time() - t_start:.0f}s. Runs: {root / 'outputs'}; "
          f"MLflow: {os.environ['MLFLOW_TRACKING_URI']}\n{dashboard(s2)}")
    write_json(root / "demo_results.json", rows, indent=1)
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
