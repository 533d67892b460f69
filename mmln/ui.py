"""python -m mmln.ui [--port PORT] [--experiment NAME] [--tracking-uri URI] — `make ui`.

Serves the MLflow dashboard of the local store (`mmln.tracking.serve_ui`: `mlflow server` with one
worker, the processes tracking needs and no more) and prints, once it answers, one link that opens
on the project's experiment (the one named, else the one with the newest run) in MLflow's training
layout: with training runs in it, on the view that puts strategies x learning rates side by side
(`comparison_link`, the link `make sweep`, `mmln.report` and the demo print too). On a store without runs it says to run `make demo` first instead of opening MLflow's own
empty page. Ctrl-C stops the server.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path


def newest_experiment(client, name: str | None):
    """(id, name) of experiment `name`, else of the experiment holding the newest run; None when none."""
    if name:
        exp = client.find_experiment(name)
        return (exp.experiment_id, exp.name) if exp is not None else None
    best = None
    for exp in client.search_experiments():
        runs = client.runs([exp.experiment_id], order_by=["attributes.start_time DESC"], limit=1)
        if runs and (best is None or runs[0].info.start_time > best[0]):
            best = (runs[0].info.start_time, exp.experiment_id, exp.name)
    return best[1:] if best else None


DEFAULT_PORT = 5000  # make ui's PORT


def dashboard_metrics(select_metric: str) -> list[str]:
    """The view's metric columns: the selection metric, then the paper's main scores (MME, VQAv2,
    CIDEr, POPE accuracy per split); those no run of the experiment has are left out."""
    from mmln.eval.columns import MAIN_COLUMNS, pope_columns

    return [select_metric] + [m for _, m in MAIN_COLUMNS + pope_columns(measures=("accuracy",)) if m != select_metric]


def newest_select_metric(client, experiment_id: str) -> str:
    """The newest sweep's `--select-metric` in the experiment, else `mmln.eval.selection.DEFAULT_METRIC`."""
    from mmln.eval.selection import DEFAULT_METRIC
    from mmln.tracking import Tags

    parents = client.runs([experiment_id], f"tags.{Tags.KIND} = 'sweep'", order_by=["attributes.start_time DESC"], limit=1)
    return parents[0].data.params.get("select_metric", DEFAULT_METRIC) if parents else DEFAULT_METRIC


def comparison_link(client, experiment_id: str, select_metric: str | None = None, base: str | None = None) -> str:
    """Store the experiment's strategies x learning rates view in the experiment (`mmln.tracking.views`:
    every run a row, columns strategy, lr, the selection metric and the main scores, best first) and
    return the link that opens it: on `base`, else on the tracking server itself, else on `make ui`'s
    address. `select_metric`: the sweep's (default: the newest sweep's, else DEFAULT_METRIC)."""
    from mmln.eval.selection import higher_is_better
    from mmln.tracking import Tags
    from mmln.tracking.views import save_comparison_view, ui_base, view_url

    metric = select_metric or newest_select_metric(client, experiment_id)
    key = save_comparison_view(client, experiment_id, metric, not higher_is_better(metric), [Tags.STRATEGY, Tags.LR],
                               dashboard_metrics(metric))
    http = client.uri.startswith(("http://", "https://"))
    return view_url(base or (client.uri.rstrip("/") if http else ui_base(DEFAULT_PORT)), experiment_id, key)


def dashboard_line(client, experiment_id: str, select_metric: str | None = None) -> str:
    """`dashboard: <comparison_link>` and, for a local store, the command that serves it."""
    link = comparison_link(client, experiment_id, select_metric)
    if client.uri.startswith(("http://", "https://")):
        return f"dashboard: {link}"
    serve = "make ui" if client.uri == f"sqlite:///{Path('mlflow.db').resolve()}" else \
        f"python -m mmln.ui --tracking-uri {client.uri}"
    return f"dashboard (serve it with `{serve}`): {link}"


def has_training_runs(client, experiment_id: str) -> bool:
    from mmln.tracking import Tags

    return bool(client.runs([experiment_id], f"tags.{Tags.STRATEGY} LIKE '%'", limit=1))


def wait_ready(proc, base: str, timeout: float = 300.0) -> bool:
    """True once `base`/health answers; False when the server exits or `timeout` passes first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=5).close()
            return True
        except OSError:
            time.sleep(0.5)
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmln.ui", description=__doc__.split("\n\n")[1].replace("\n", " "))
    ap.add_argument("--port", type=int, default=DEFAULT_PORT,
                    help="port on the loopback, [::1] (else 127.0.0.1; default: %(default)s; make ui PORT=...)")
    ap.add_argument("--experiment", help="experiment to open (default: the one with the newest run)")
    ap.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    ap.add_argument("--select-metric", help="the view's sort (default: the newest sweep's --select-metric)")
    args = ap.parse_args(argv)
    from mmln.base.progress import quiet_third_party
    from mmln.tracking import Tracker, tracking_uri, ui_base, ui_links

    os.environ.setdefault("MMLN_QUIET", "1")
    quiet_third_party()
    uri = tracking_uri(args.tracking_uri)
    empty = uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file()  # not created here
    client = None if empty else Tracker(uri)
    exp = None if empty else newest_experiment(client, args.experiment)
    if exp is None:
        what = f"no experiment '{args.experiment}'" if args.experiment else "no runs yet"
        print(f"mmln.ui: the MLflow store {uri} holds {what}: run `make demo` (or `make sweep`) first, "
              "then `make ui`", file=sys.stderr)
        return 2
    base = ui_base(args.port)  # its strategies x lrs view when it holds training runs, else its runs
    link = comparison_link(client, exp[0], args.select_metric, base) if has_training_runs(client, exp[0]) else \
        ui_links(base, exp[0], [])["experiment"]
    return serve(uri, args.port, f"mmln.ui: ready. Experiment '{exp[1]}': {link}  (Ctrl-C stops it)")


def interrupted(signum, frame):
    raise KeyboardInterrupt  # SIGTERM, SIGHUP (a closed terminal, a stopped make): stop as Ctrl-C does


def serve(uri: str, port: int, ready: str) -> int:
    """Run `mlflow server` for the store on the loopback's `port` (`mmln.tracking.views.loopback`), print
    `ready` once it answers, and stop it with its workers (their own process group) on Ctrl-C, SIGTERM or SIGHUP."""
    from mmln.tracking import serve_ui, ui_base

    base = ui_base(port)
    log = Path(uri[len("sqlite:///"):]).with_name("mlflow-ui.log") if uri.startswith("sqlite:///") else Path("mlflow-ui.log")
    print(f"mmln.ui: starting MLflow for {uri} on {base} (its log: {log}) ...", flush=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    with open(log, "a") as f:
        proc = serve_ui(uri, port, log=f)
    try:
        if not wait_ready(proc, base):
            print(f"mmln.ui: MLflow did not start on port {port} (in use? try make ui PORT=5001)", file=sys.stderr)
            return 1
        print(ready, flush=True)
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:  # the server and its workers: their own process group (serve_ui's new session)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
