"""The cluster's setup, on this machine: one PostgreSQL server (tests/pg.py) holding the Optuna study
and, behind an `mlflow server`, the MLflow tracking store; the sweep reaches both over loopback TCP
as workers on other nodes would. The same tiny sweeps as tests/test_sweep.py and tests/test_halving.py,
checked against what they give on local sqlite files. Skipped where no PostgreSQL server starts."""
from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from mmln import sweep
from mmln.sweeps.study import storage_of
from tests import test_halving as halving_test
from tests import test_sweep as grid_test
from tests.conftest import make_world
from tests.pg import mlflow_server


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("cluster_world"), n_pretrain=2, n_instruct=36,
                      n_mme_per_subtask=1, n_pope_images=2, n_vqa_images=1, n_caption_images=1)[0]


def rows(url: str, sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_a_grid_sweep_tracked_by_an_mlflow_server_on_postgresql(pg_url, world, tmp_path):
    """2 lrs x 3 steps + POPE, tracked by `mlflow server --backend-store-uri postgresql://...`: the
    runs, each step's loss once, the parent FINISHED, the weights as artifacts, all in PostgreSQL's
    tables (not a local fallback store)."""
    db = tmp_path / "unused.db"  # grid_test's overrides name a sqlite store; the last tracking.uri wins
    with mlflow_server(pg_url, tmp_path / "server") as base:
        assert sweep.main(grid_test.sweep_args(world, db) + [f"tracking.uri={base}"]) == 0
        client = MlflowClient(base)
        exp = client.get_experiment_by_name("tiny_sweep")
        runs = client.search_runs([exp.experiment_id])
        parent = next(r for r in runs if r.data.tags.get("kind") == "sweep")
        children = [r for r in runs if r is not parent]
        assert parent.info.status == "FINISHED" and len(children) == 2
        for r in children:
            assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parent.info.run_id
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")]
            assert sorted(steps) == [0, 1, 2]  # each step once
            assert grid_test.METRIC in r.data.metrics
            assert "trainable.safetensors" in {a.path for a in client.list_artifacts(r.info.run_id)}
        assert float(parent.data.tags["best_lr/layernorm"]) in {float(lr) for lr in grid_test.LRS}
    assert not db.exists()
    assert rows(pg_url, "SELECT status, count(*) FROM runs GROUP BY status") == [("FINISHED", 3)]
    assert rows(pg_url, "SELECT count(*) FROM metrics WHERE key = 'train/loss'")[0][0] == 6
    assert (tmp_path / "server" / "artifacts").is_dir()


def study_record(storage: str) -> dict:
    """Per learning rate: its trial's state, each rung's decision and the proxy values it reported."""
    import optuna

    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    return {t.params["lr"]: (t.state.name, {k: v for k, v in t.user_attrs.items() if k.startswith("rung")},
                             dict(t.intermediate_values)) for t in study.trials}


@pytest.mark.slow
def test_halving_on_postgresql_and_an_mlflow_server_picks_the_sqlite_survivors(postgres, world, tmp_path):
    """test_halving's 5-lr sweep (rungs at 1, 3, 9 steps), once on sqlite files and once as a cluster
    runs it (study in PostgreSQL, tracking through an MLflow server on PostgreSQL): the same
    decisions and proxy values at every rung, the same best lr, the survivor's weights torch.equal,
    each step's loss logged once, the parent FINISHED."""
    ref_root, pg_root = tmp_path / "sqlite", tmp_path / "pg"
    ref_root.mkdir(), pg_root.mkdir()
    assert sweep.main(halving_test.halving_args(world, ref_root)) == 0
    ref = study_record(storage_of(str(ref_root / "outputs/tiny_halving/optuna.journal")))  # the default

    study_url, store_url = postgres.create_database(), postgres.create_database()
    with mlflow_server(store_url, pg_root / "server") as base:
        args = ["--study-storage", study_url, *halving_test.halving_args(world, pg_root), f"tracking.uri={base}"]
        assert sweep.main(args) == 0
        client = MlflowClient(base)
        runs = client.search_runs([client.get_experiment_by_name("tiny_halving").experiment_id])
        parent = next(r for r in runs if r.data.tags.get("kind") == "sweep")
        children = {float(r.data.tags["lr"]): r for r in runs if r is not parent}
        assert parent.info.status == "FINISHED" and len(children) == len(halving_test.LRS)
        for r in children.values():
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")]
            assert len(steps) == len(set(steps)) and r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        best = parent.data.tags["best_lr/layernorm"]
    assert study_record(study_url) == ref and not (pg_root / "outputs/tiny_halving/optuna.journal").exists()
    ref_client = MlflowClient(f"sqlite:///{ref_root / 'mlflow.db'}")
    ref_runs = ref_client.search_runs([ref_client.get_experiment_by_name("tiny_halving").experiment_id])
    assert next(r for r in ref_runs if r.data.tags.get("kind") == "sweep").data.tags["best_lr/layernorm"] == best
    survivor = next(r.info.run_name for r in ref_runs if r.data.tags.get("halving/state") == "finished")
    a, b = (load_file(str(root / "outputs/tiny_halving" / survivor / "trainable.safetensors")) for root in (ref_root, pg_root))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rows(study_url, "SELECT count(*) FROM trials")[0][0] == len(halving_test.LRS)
