"""The dashboard: `mlflow server` for a store, and links into its UI."""
from __future__ import annotations

import json
import os
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


def serve_ui(uri: str, port: int = 5000, host: str = "127.0.0.1", log=None):
    """Start `mlflow server` for this store on host:port (a subprocess in its own process group; the caller
    waits or stops it): one worker, no job runner (its 7 huey workers serve GenAI jobs); output to `log`."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", uri, "--host",
                             host, "--port", str(port), "--workers", "1"], start_new_session=True, env=env, stdout=log, stderr=log)
