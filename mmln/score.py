"""``python -m mmln.score``: score answer files in the benchmarks' official formats (no model).

    python -m mmln.score --bench mme --answers DIR
    python -m mmln.score --bench pope --answers answers.jsonl --annotations coco_pope_random.json ...
    python -m mmln.score --bench vqav2 --answers results.json --questions Q.json --annotations A.json
    python -m mmln.score --bench caption --answers results.json --karpathy dataset_coco.json --split test

``--profile official|paper`` (default official), ``--json`` for machine-readable output.
Exit codes: 0 scored, 2 bad input (missing / malformed file, missing Java), one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mmln.eval import caption, mme, pope, vqav2
from mmln.eval.profiles import PROFILES

BENCHES = ("mme", "pope", "vqav2", "caption")


class UsageError(ValueError):
    """Bad command line (reported like a bad file: one line, exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m mmln.score", description=__doc__.split("\n\n")[0],
                epilog="examples:\n" + __doc__.split("\n\n")[1] + "\n\n" + __doc__.split("\n\n")[2],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", required=True, choices=BENCHES)
    p.add_argument("--profile", default="official", choices=PROFILES,
                   help="official: benchmark authors' tools; paper: the paper's harness (default official)")
    p.add_argument("--answers", required=True,
                   help="mme: directory of <subtask>.txt; pope: answers .jsonl; vqav2/caption: results .json")
    p.add_argument("--annotations", nargs="+",
                   help="pope: one or more coco_pope_<split>.json; vqav2: the annotations .json")
    p.add_argument("--questions", help="vqav2: the questions .json")
    p.add_argument("--karpathy", help="caption: Karpathy split file (dataset_coco.json / dataset_flickr30k.json)")
    p.add_argument("--split", default="test", help="caption: Karpathy split to score (default test)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def _need(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n}" for n in names if getattr(args, n) is None]
    if missing:
        parser.error(f"--bench {args.bench} needs {' and '.join(missing)}")


def score(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Run the scorer named by ``args.bench`` and return its JSON-able result."""
    if args.bench == "mme":
        return mme.score_mme_dir(args.answers, args.profile)
    if args.bench == "pope":
        _need(parser, args, "annotations")
        return pope.score_pope_files(args.answers, args.annotations, args.profile)
    if args.bench == "vqav2":
        _need(parser, args, "questions", "annotations")
        if len(args.annotations) != 1:
            parser.error("--bench vqav2 takes exactly one --annotations file")
        return vqav2.score_vqav2_files(args.answers, args.questions, args.annotations[0], args.profile)
    _need(parser, args, "karpathy")
    return caption.score_caption_files(args.answers, args.karpathy, args.split, args.profile)


def format_table(bench: str, profile: str, result: dict[str, Any]) -> str:
    """A small human-readable table of ``result``."""
    lines = [f"{bench} ({profile} profile)"]
    if bench == "mme":
        lines.append(f"{'subtask':<24}{'acc %':>8}{'acc+ %':>8}{'score':>9}")
        for name, d in result["details"].items():
            note = "" if d["counted"] else "  (not counted)"
            lines.append(f"{name:<24}{100 * d['acc']:>8.2f}{100 * d['acc_plus']:>8.2f}{d['score']:>9.2f}{note}")
        lines.append(f"{'perception':<40}{result['perception']:>9.2f}")
        lines.append(f"{'cognition':<40}{result['cognition']:>9.2f}")
    elif bench == "pope":
        lines.append("(fractions in [0, 1])")
        lines.append(f"{'split':<14}{'accuracy':>10}{'precision':>11}{'recall':>9}{'f1':>9}{'yes_ratio':>11}")
        for split, m in result.items():
            lines.append(
                f"{split:<14}{m['accuracy']:>10.4f}{m['precision']:>11.4f}{m['recall']:>9.4f}"
                f"{m['f1']:>9.4f}{m['yes_ratio']:>11.4f}"
            )
    elif bench == "vqav2":
        lines.append(f"{'overall':<12}{result['overall']:>8.2f} %  ({result['n']} questions)")
        for kind, value in sorted(result["per_answer_type"].items()):
            lines.append(f"{kind:<12}{value:>8.2f} %")
    else:
        lines.append(f"CIDEr {result['CIDEr']:.2f} (x100; raw {result['CIDEr_raw']:.4f}, {result['n_images']} images)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        result = score(args, parser)
    except (OSError, ValueError, RuntimeError) as e:
        message = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename else str(e)
        print(f"mmln.score: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_table(args.bench, args.profile, result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
