"""The dashboard: `mlflow server` for a store, and links into its UI."""
from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def ui_links(base: str, experiment_id: str, run_ids: list[str]) -> dict[str, str]:
    """Dashboard links: the experiment's runs, and MLflow's compare page for `run_ids` (their
    params and metrics side by side, e.g. every strategy x learning rate of a sweep)."""
    from urllib.parse import quote

    exp = json.dumps([str(experiment_id)], separators=(",", ":"))
    runs = json.dumps(list(run_ids), separators=(",", ":"))
    return {"experiment": f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning",
            "compare": f"{base}/#/compare-runs?runs={quote(runs)}&experiments={quote(exp)}"}


@functools.cache
def loopback() -> str:
    """The host `serve_ui` listens on: the IPv6 loopback `::1` where this machine has one, else `127.0.0.1`.
    MLflow's UI (3.17) opens its Assistant panel over the right third of the page by itself on a
    browser's first visit to a server it takes for local: it compares the page's hostname with
    "localhost", "127.0.0.1" and "::1", and a browser spells the IPv6 loopback "[::1]". On [::1] the
    comparison opens whole; MLflow's host and origin checks accept [::1] as they accept 127.0.0.1."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return "::1"
    except OSError:
        return "127.0.0.1"


def ui_base(port: int) -> str:
    """The dashboard's address: `http://[::1]:PORT`, else `http://127.0.0.1:PORT` (`loopback`)."""
    host = loopback()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve_ui(uri: str, port: int = 5000, host: str | None = None, log=None):
    """Start `mlflow server` for this store on host:port (default host: `loopback()`; a subprocess in its
    own process group, the caller waits or stops it): one worker, no job runner (its 7 huey workers
    serve GenAI jobs); output to `log`."""
    host = host or loopback()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", uri, "--host",
                             host, "--port", str(port), "--workers", "1"], start_new_session=True, env=env, stdout=log, stderr=log)


# MLflow's UI (3.x) opens a view saved as an experiment tag `mlflow.sharedViewState.<key>` when the
# runs page's URL carries `?viewStateShareKey=<key>` (its "Share" button writes the same): the tag's
# value is the page's search facets and UI state as JSON (or "deflate;" + base64 of zlib-compressed
# JSON). A view is stored in the experiment, so any browser, fresh or not, opens it the same way.
SHARE_PARAM, SHARE_TAG = "viewStateShareKey", "mlflow.sharedViewState."
MAX_TAG_VALUE = 20000  # MLflow's limit on an experiment tag's value


def column(kind: str, key: str) -> str:
    """MLflow's canonical column / sort key: "metrics.`eval/mme_perception`", "tags.`strategy`"."""
    return f"{kind}.`{key}`"


def comparison_view(sort_by: str, ascending: bool, tags: list[str], metrics: list[str]) -> dict:
    """The runs page's state: one row per run (MLflow nests child runs under their parent only when
    sorted by start time, so sorted by a metric every grid point is its own row), columns `tags`
    then `metrics`, sorted by `sort_by`. Every UI field MLflow's page keeps is given: it replaces its
    whole UI state with the view's. The run name, `tags` and `metrics` come first (`columnOrder`),
    then when each run started and how long it took."""
    shown = [column("tags", t) for t in tags] + [column("metrics", m) for m in metrics]
    return {
        "searchFilter": "", "orderByKey": column("metrics", sort_by), "orderByAsc": ascending, "startTime": "ALL",
        "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": [],
        "selectedColumns": shown, "columnOrder": [column("attributes", "Run Name"), *shown, "runDateAndNestInfo", "duration"],
        "columnWidths": {column("metrics", m): 24 + 7 * len(m) for m in metrics},  # whole names in the headers
        "runsExpanded": {}, "runsPinned": [], "runsHidden": [],
        "runsVisibilityMap": {}, "runsHiddenMode": "SHOW_ALL", "compareRunCharts": None, "compareRunSections": None,
        "viewMaximized": False, "runListHidden": False, "isAccordionReordered": False, "groupBy": None,
        "groupsExpanded": {}, "autoRefreshEnabled": True, "useGroupedValuesInCharts": True, "hideEmptyCharts": True,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def encode_view(view: dict) -> str:
    """The tag value MLflow's UI reads: JSON, compressed ("deflate;" + base64 of zlib, as its pako
    writes it) only when plain JSON is over the tag limit."""
    import base64
    import zlib

    text = json.dumps(view, separators=(",", ":"))
    if len(text) <= MAX_TAG_VALUE:
        return text
    packed = "deflate;" + base64.b64encode(zlib.compress(text.encode())).decode()
    if len(packed) > MAX_TAG_VALUE:
        raise ValueError(f"dashboard view of {len(view['selectedColumns'])} columns is over MLflow's tag limit")
    return packed


def decode_view(value: str) -> dict:
    import base64
    import zlib

    if value.startswith("deflate;"):
        value = zlib.decompress(base64.b64decode(value[len("deflate;"):])).decode()
    return json.loads(value)


def view_key(sort_by: str) -> str:
    """One view per selection metric: `mmln-eval-flickr30k-cider`."""
    import re

    return "mmln-" + re.sub(r"[^A-Za-z0-9]+", "-", sort_by).strip("-")


def save_comparison_view(client, experiment_id: str, sort_by: str, ascending: bool, tags: list[str],
                         metrics: list[str]) -> str:
    """Store the comparison view in the experiment (tag `mlflow.sharedViewState.<key>`, replacing
    only mmln's own view of that metric); returns its key. `metrics` are kept when some run of the
    experiment has them, the sort metric first."""
    present = set()
    for run in client.runs([experiment_id]):
        present |= set(run.data.metrics)
    shown = [sort_by] + [m for m in metrics if m != sort_by and m in present]
    key = view_key(sort_by)
    client.set_experiment_tag(experiment_id, SHARE_TAG + key,
                              encode_view(comparison_view(sort_by, ascending, tags, shown)))
    return key


def view_url(base: str, experiment_id: str, key: str) -> str:
    """The runs page of the experiment (training layout, table) opened on the view `key`."""
    return (f"{base}/#/experiments/{experiment_id}/runs?{SHARE_PARAM}={key}&compareRunsMode=TABLE"
            "&workflowType=machine_learning")
