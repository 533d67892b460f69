"""`python -m mmln.sweep`: the sweep command, kept at its documented path. The code lives in the
`mmln.sweeps` package (see `mmln/sweeps/cli.py` for the command's documentation); the names below
are re-exported for the scripts and tests that import them from here."""
from __future__ import annotations

from mmln.sweeps.cli import main, parse_args, parser
from mmln.sweeps.plan import DEFAULT_BENCH, DEFAULT_METRIC, VOLATILE, Point, config_hash, parse_point_overrides, plan
from mmln.sweeps.point import point_tags, run_point
from mmln.sweeps.summary import pick_best, report_text, summarize

__all__ = ["DEFAULT_BENCH", "DEFAULT_METRIC", "VOLATILE", "Point", "config_hash", "main", "parse_args",
           "parse_point_overrides", "parser", "pick_best", "plan", "point_tags", "report_text", "run_point",
           "summarize"]

if __name__ == "__main__":
    raise SystemExit(main())
