"""python -m mmln.report --experiment NAME[,NAME...] | --config CFG [key=value ...] [--out DIR] [--tables ...]

The command line of `mmln.report` (what it writes: the package's docstring, `mmln/report/__init__.py`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmln.report.rows import load_runs, reference, reference_params, strategy_key
from mmln.report.scale import Evidence
from mmln.report.write import TABLES, log_report, markdown, report
from mmln.eval.selection import DEFAULT_METRIC
from mmln.ui import dashboard_line


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mmln.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", action="append", default=[],
                    help="MLflow experiment name(s), comma-separated or repeated (default: --config's experiment)")
    ap.add_argument("--config", action="append", default=[],
                    help="reference run config(s), one per model (repeatable): rows prefer runs of this config, "
                         "and the experiment defaults to its tracking.experiment")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of every --config (as the runs were given)")
    ap.add_argument("--out", help="output folder (default: outputs/<experiment>/report)")
    ap.add_argument("--tables", default=",".join(TABLES), help="subset of %(default)s")
    ap.add_argument("--select-metric", default=DEFAULT_METRIC, help="picks each strategy's best lr (default: %(default)s)")
    ap.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    ap.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    ap.add_argument("--open", action="store_true",
                    help="then serve the MLflow UI on --port (as `make ui`: linking the strategies x learning "
                         "rates view) and print MLflow's compare page of the runs; Ctrl-C stops it")
    ap.add_argument("--port", type=int, default=5000, help="port of --open's UI (default: %(default)s)")
    ev = Evidence()
    ap.add_argument("--smoke-steps", type=int, default=ev.min_steps, metavar="N",
                    help="runs of fewer optimizer steps are smoke scale: every table and figure they are in says "
                         "'smoke scale: not evidence' (default: %(default)s)")
    ap.add_argument("--smoke-samples", type=int, default=ev.min_samples, metavar="N",
                    help="the same for fewer samples seen in training (default: %(default)s)")
    ap.add_argument("--smoke-eval-limit", type=int, default=ev.min_eval_limit, metavar="N",
                    help="the same for an evaluation limited to fewer items per benchmark (eval.limit; "
                         "default: %(default)s)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    from mmln.config import ConfigError, load_config
    from mmln.fit import experiment_name
    from mmln.base.outputs import DiskFullError, OutputError, replacing
    from mmln.tracking import Tracker, tracking_uri
    experiments = [e for x in args.experiment for e in x.split(",") if e]
    tables = [t for t in args.tables.split(",") if t]
    if set(tables) - set(TABLES):
        ap.error(f"--tables: choose from {','.join(TABLES)}")
    try:
        references = reference_params([(c, args.overrides) for c in args.config]) if args.config else None
        experiments = experiments or list(dict.fromkeys(
            experiment_name(load_config(c, args.overrides), c) for c in args.config))
    except ConfigError as e:
        print(f"mmln.report: error: {e}", file=sys.stderr)
        return 2
    if not experiments:
        ap.error("give --experiment NAME or --config CFG")
    out = (Path(args.out) if args.out else Path("outputs") / "+".join(experiments) / "report").resolve()
    uri = tracking_uri(args.tracking_uri)
    client = Tracker(uri)
    try:
        with replacing(out, "report") as tmp:  # built beside --out (refused if not mmln's), manifest last, swapped in
            built, files = report(client, experiments, tmp, args.select_metric, tables, references,
                                  Evidence(args.smoke_steps, args.smoke_samples, args.smoke_eval_limit))
    except (LookupError, OutputError, DiskFullError) as e:  # no such experiment; --out not mmln's; a full disk
        print(f"mmln.report: error: {e.args[0] if isinstance(e, LookupError) else e}", file=sys.stderr)
        return 2
    for t in built.values():
        print(markdown(t, bold_max=t.key == "tableA1"))
    run = "" if args.no_log else f"; MLflow run {log_report(client, experiments[0], '+'.join(experiments), out)}"
    if not args.no_log:  # the view is a tag of the experiment: --no-log writes none
        print(dashboard_line(client, client.find_experiment(experiments[0]).experiment_id, args.select_metric))
    print(f"report: {out / 'report.md'} ({len(files)} files){run}")
    if args.open:
        return open_ui(client, uri, experiments, references, args.port, args.select_metric)
    return 0


def open_ui(client, uri: str, experiments: list[str], references, port: int, select_metric: str) -> int:
    """Print MLflow's compare page of the runs, then serve the dashboard until Ctrl-C (`mmln.ui`: its
    ready line links the strategies x learning rates view)."""
    from mmln import ui
    from mmln.tracking import ui_base, ui_links

    exp = client.find_experiment(experiments[0])
    runs = sorted(reference(load_runs(client, [exp.experiment_id], references)), key=lambda r: (strategy_key(r.strategy), -r.lr))
    links = ui_links(ui_base(port), exp.experiment_id, [r.run_id for r in runs])
    print(f"its {len(runs)} runs (strategies x learning rates) on MLflow's compare page: {links['compare']}", flush=True)
    return ui.main(["--tracking-uri", uri, "--port", str(port), "--experiment", experiments[0], "--select-metric",
                    select_metric])
