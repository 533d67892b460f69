"""python -m mmln.predict --config CFG --ckpt PATH|none --image IMG --question Q [--image ... --question ...] [key=value ...]

Answers questions about images with a trained model (`mmln.load`), one answer per line. One image
for every question, or one `--image` per `--question`. Exit 2 on a problem the user fixes (bad
config, missing checkpoint, image or weights), one line on stderr.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmln.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="the run config the checkpoint was trained with")
    ap.add_argument("--ckpt", required=True, help="trainable.safetensors or checkpoints/last.ckpt; 'none' = untuned")
    ap.add_argument("--image", action="append", required=True, help="image file (repeatable)")
    ap.add_argument("--question", action="append", required=True, help="question (repeatable)")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. eval.max_new_tokens=32")
    args = ap.parse_args(argv)
    if len(args.image) not in (1, len(args.question)):
        ap.error(f"{len(args.image)} --image for {len(args.question)} --question: give one, or one per question")
    from PIL import UnidentifiedImageError

    from mmln.api import load
    from mmln.config import ConfigError
    from mmln.model.errors import MissingWeightsError

    try:
        model = load(args.config, args.ckpt, args.overrides)
        answers = model.ask(args.image if len(args.image) > 1 else args.image[0], args.question)
    except (ConfigError, MissingWeightsError, FileNotFoundError, UnidentifiedImageError, ValueError) as e:
        print(f"mmln.predict: error: {e}", file=sys.stderr)
        return 2
    for a in answers:
        print(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
