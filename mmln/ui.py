"""python -m mmln.ui [--port PORT] [--experiment NAME] [--tracking-uri URI] — `make ui`.

Serves the MLflow dashboard of the local store (`mmln.tracking.serve_ui`: `mlflow server` with one
worker, the processes tracking needs and no more) and prints, once it answers, one link that opens
on the project's experiment (the one named, else the one with the newest run) in MLflow's training
layout. On a store without runs it says to run `make demo` first instead of opening MLflow's own
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
    ap.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default: %(default)s; make ui PORT=...)")
    ap.add_argument("--experiment", help="experiment to open (default: the one with the newest run)")
    ap.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    args = ap.parse_args(argv)
    from mmln.base.progress import quiet_third_party
    from mmln.tracking import Tracker, serve_ui, tracking_uri, ui_links

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
    base = f"http://127.0.0.1:{args.port}"
    log = Path(uri[len("sqlite:///"):]).with_name("mlflow-ui.log") if uri.startswith("sqlite:///") else Path("mlflow-ui.log")
    print(f"mmln.ui: starting MLflow for {uri} on {base} (its log: {log}) ...", flush=True)
    with open(log, "a") as f:
        proc = serve_ui(uri, args.port, log=f)
    try:
        if not wait_ready(proc, base):
            print(f"mmln.ui: MLflow did not start on port {args.port} (in use? try make ui PORT=5001)", file=sys.stderr)
            return 1
        print(f"mmln.ui: ready. Experiment '{exp[1]}': {ui_links(base, exp[0], [])['experiment']}  (Ctrl-C stops it)",
              flush=True)
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:  # the server and its workers: their own process group (serve_ui's new session)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
