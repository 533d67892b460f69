"""What a Tracker reads back: experiments by name, runs (all pages of a search), a sweep point's
finished run by config hash, orphaned RUNNING runs of a run folder, and JSON artifacts."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Optional

from mmln.tracking.tags import Tags


class RunQueries:
    """Tracker's reads (a mixin over MlflowClient's calls, which `RetryingClient` supplies)."""

    def find_experiment(self, name: str):
        """The experiment called `name`, or None (never creates one)."""
        return self.get_experiment_by_name(name)

    def experiment_names(self) -> list[str]:
        return [e.name for e in self.search_experiments()]

    # ------------------------------------------------------------------------------------- runs
    def find_run(self, run_id: str):
        """The run, or None when the store has no such run."""
        from mlflow.exceptions import MlflowException

        try:
            return self.get_run(run_id)
        except MlflowException:
            return None

    def runs(self, experiment_ids: list[str], filter_string: str = "", order_by: Optional[list[str]] = None,
             limit: Optional[int] = None) -> list:
        """Every run matching `filter_string` (MLflow's search syntax), all pages, or the first `limit`."""
        out, token = [], None
        while True:
            page = self.search_runs(experiment_ids, filter_string, order_by=order_by or None,
                                    max_results=min(limit or 1000, 1000), page_token=token)
            out += list(page)
            token = page.token
            if not token or (limit is not None and len(out) >= limit):
                return out[:limit] if limit is not None else out

    def finished_run(self, experiment_id: str, config_hash: str):
        """The newest FINISHED run of this config (tag CONFIG_HASH), or None."""
        runs = self.runs([experiment_id], f"tags.{Tags.CONFIG_HASH} = '{config_hash}' and attributes.status = 'FINISHED'",
                         order_by=["attributes.start_time DESC"], limit=1)
        return runs[0] if runs else None

    def close_orphans(self, experiment_id: str, run_id: str, run_dir: str) -> list[str]:
        """Mark KILLED every other RUNNING run of this experiment with the same RUN_DIR (runs of the
        same run folder left behind by a killed process); returns their ids."""
        runs = self.runs([experiment_id], f"tags.`{Tags.RUN_DIR}` = '{run_dir}' and attributes.status = 'RUNNING'")
        orphans = [r.info.run_id for r in runs if r.info.run_id != run_id]
        for orphan in orphans:
            self.set_terminated(orphan, "KILLED")
        return orphans

    def download(self, run_id: str, path: str, dst: str | Path) -> Path:
        return Path(self.download_artifacts(run_id, path, str(dst)))

    def read_json(self, run_id: str, path: str) -> Optional[Any]:
        """A JSON artifact of the run (e.g. `eval/scores.json`), or None when it has none or it does
        not parse."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                return json.loads(self.download(run_id, path, tmp).read_text())
            except Exception:
                return None

