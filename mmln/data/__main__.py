"""`python -m mmln.data synth|check|inspect ...`

  synth   [--out DIR ...]                                   synthetic data in the real formats (mmln.data.synth)
  check   [--config CFG] [key=value ...] [--show N]         validate train (and val) without training; exit 1 if any record is bad
  inspect [--config CFG] [key=value ...] --index I [--split train|val] [--json]
                                                            one sample as the model sees it

The tokenizer comes from `model.llm.tokenizer`, else `model.llm.path` (a local directory).
Exit codes: 0 ok, 1 bad records (check) or a bad sample (inspect), 2 usage / config problems.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence


class UsageError(Exception):
    """Exit 2 with this message."""


def load_tokenizer(cfg: Any) -> Any:
    """AutoTokenizer from `model.llm.tokenizer` or `model.llm.path` (local files only)."""
    key, path = ("model.llm.tokenizer", cfg.model.llm.tokenizer) if cfg.model.llm.tokenizer else ("model.llm.path", cfg.model.llm.path)
    if not path:
        raise UsageError(
            "no tokenizer: set model.llm.tokenizer (or model.llm.path) to a local directory that contains "
            "the tokenizer files (tokenizer_config.json with tokenizer.model or tokenizer.json)"
        )
    if not Path(path).is_dir():
        raise UsageError(
            f"{key}={path} is not a directory: it must be a local directory that contains the tokenizer files "
            "(tokenizer_config.json with tokenizer.model or tokenizer.json)"
        )
    from transformers import AutoTokenizer

    try:
        legacy = cfg.model.llm.tokenizer_legacy  # pinned as training pins it (mmln.model.llm.load_tokenizer)
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                             **({} if legacy is None else {"legacy": bool(legacy)}))
    except Exception as e:  # transformers raises several types for an unusable dir
        raise UsageError(f"{key}={path}: cannot load a tokenizer from it ({type(e).__name__}: {e})") from None


def _setup(args: argparse.Namespace) -> tuple[Any, Any]:
    from mmln.config import load_config

    cfg = load_config(args.config, args.overrides)
    return cfg, load_tokenizer(cfg)


def _datasets(cfg: Any, tok: Any) -> dict[str, Any]:
    from mmln.base.constants import image_positions

    from .dataset import build_datasets

    train, val = build_datasets(cfg, tok, image_positions(cfg.model.vision))
    return {"train": train} if val is None else {"train": train, "val": val}


def cmd_check(args: argparse.Namespace) -> int:
    import torch

    cfg, tok = _setup(args)
    splits = _datasets(cfg, tok)
    any_bad = False
    for name, ds in splits.items():
        loader = torch.utils.data.DataLoader(
            _CheckView(ds), batch_size=32, num_workers=args.workers if args.workers is not None else cfg.data.num_workers,
            collate_fn=list,
        )
        counts: Counter[str] = Counter()
        ids: dict[str, list[str]] = defaultdict(list)
        truncated = 0
        from mmln.base.progress import bar

        for batch in bar(loader, total=len(loader), desc=f"check {name}", unit="batch"):
            for rid, reason, detail, trunc in batch:
                truncated += trunc
                if reason:
                    counts[reason] += 1
                    if len(ids[reason]) < args.show:
                        ids[reason].append(f"{rid}" + (f" ({detail})" if detail and args.verbose else ""))
        n_bad = sum(counts.values())
        any_bad |= n_bad > 0
        files = sorted({r.file for r in ds.records})
        print(f"{name}: {len(ds)} records from {', '.join(files)}; template={ds.template}; "
              f"{len(ds) - n_bad} ok, {n_bad} bad; {truncated} cut to model.max_length={ds.max_length} (still supervised)")
        for reason, n in counts.most_common():
            print(f"  {reason}: {n}")
            for rid in ids[reason]:
                print(f"    {rid}")
            if n > len(ids[reason]):
                print(f"    ... ({n - len(ids[reason])} more)")
    print("check: FAILED (bad records above)" if any_bad else "check: OK")
    return 1 if any_bad else 0


class _CheckView:
    """Dataset view yielding (id, reason, detail, truncated) per record, for DataLoader workers."""

    def __init__(self, ds: Any):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[str, Optional[str], str, bool]:
        reason, detail, truncated = self.ds.check(i)
        return self.ds.records[i].id, reason, detail, truncated


def cmd_inspect(args: argparse.Namespace) -> int:
    from mmln.base.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

    cfg, tok = _setup(args)
    splits = _datasets(cfg, tok)
    if args.split not in splits:
        raise UsageError(f"no '{args.split}' split configured (set data.val.files or data.val_fraction)")
    ds = splits[args.split]
    ds.on_bad_sample = "skip"
    if not 0 <= args.index < len(ds):
        raise UsageError(f"--index {args.index} out of range: the {args.split} split has {len(ds)} records")
    sample = ds[args.index]
    if "bad" in sample:
        print(f"record {sample['id']} ({sample['file']}) is bad: {sample['bad']} {sample['detail']}", file=sys.stderr)
        return 1
    ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
    supervised = [i for i, l in zip(ids, labels) if l != IGNORE_INDEX]
    sup_text = tok.decode(supervised)
    if args.json:
        print(json.dumps({"id": sample["id"], "input_ids": ids, "labels": labels, "supervised_text": sup_text}))
        return 0
    print(f"record {sample['id']} (split {args.split}, index {args.index}); template {ds.template}; "
          f"{len(ids)} ids, {len(supervised)} supervised; image {tuple(sample['pixel_values'].shape)}")
    print(f"{'pos':>5} {'id':>7} sup piece")
    for k, (i, l) in enumerate(zip(ids, labels)):
        piece = f"<image: 1 slot -> {ds.num_image_tokens} positions>" if i == IMAGE_TOKEN_INDEX else repr(tok.convert_ids_to_tokens(i))
        print(f"{k:>5} {i:>7} {' * ' if l != IGNORE_INDEX else '   '} {piece}")
    print(f"supervised text: {sup_text!r}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "synth":
        from .synth import main as synth_main

        return int(synth_main(argv[1:]) or 0)
    p = argparse.ArgumentParser(prog="python -m mmln.data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("synth", help="write synthetic data sets (see: python -m mmln.data synth --help)")
    for name, helptext in (("check", "validate the configured data without training"),
                           ("inspect", "show one sample as the model sees it")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--config", default=None, help="run config YAML (default: schema defaults)")
        s.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.train.limit=100")
        if name == "check":
            s.add_argument("--show", type=int, default=10, help="bad record ids listed per reason")
            s.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: data.num_workers)")
            s.add_argument("--verbose", action="store_true", help="print the detail of each listed bad record")
        else:
            s.add_argument("--index", type=int, required=True)
            s.add_argument("--split", default="train", choices=("train", "val"))
            s.add_argument("--json", action="store_true", help='{"id", "input_ids", "labels", "supervised_text"}')
    args, extra = p.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = list(args.overrides) + extra  # key=value overrides given between options
    from mmln.config import ConfigError

    from .records import DataError

    try:
        return cmd_check(args) if args.cmd == "check" else cmd_inspect(args)
    except (ConfigError, DataError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
