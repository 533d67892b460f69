"""Shared fixtures: tiny models built from the `conf/model/tiny.yaml` preset, one synthetic world and
tokenizer per session, an isolated MLflow store."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "conf" / "model" / "tiny.yaml"


def free_port() -> str:
    """A TCP port free now, for a multi-process test's MASTER_PORT (a fixed one collides when two
    test runs share the machine)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])

os.environ.setdefault("MMLN_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Every test: fixed seeds, default dtype restored, MLflow writes to a store in tmp_path."""
    torch.manual_seed(0)
    import mlflow

    mlflow.set_tracking_uri(None)  # Lightning's MLFlowLogger sets MLflow's global URI, which outranks the env
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    yield
    torch.set_default_dtype(torch.float32)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (tests/pg.py: initdb in a temp dir, a free loopback
    port, stopped and removed after); skipped, with the reason, where it cannot be started here.
    `postgres.create_database()` gives a new database's URL."""
    from tests.pg import PostgresServer, PostgresUnavailable

    try:
        server = PostgresServer.start()
    except PostgresUnavailable as e:
        pytest.skip(f"no PostgreSQL server: {e}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres):
    """A new, empty database on the session's PostgreSQL server: `postgresql://postgres@127.0.0.1:PORT/t_<hex>`
    (an Optuna RDB storage, or an `mlflow server --backend-store-uri`)."""
    return postgres.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def rdb_storage(request, tmp_path):
    """An Optuna RDB storage URL: a sqlite file in tmp_path, then a new PostgreSQL database (skipped
    where no PostgreSQL server starts)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/optuna.db"
    return request.getfixturevalue("pg_url")


def tiny_config(*overrides: str):
    from mmln.config import load_config

    return load_config(TINY, list(overrides))


@pytest.fixture
def tiny_cfg():
    return tiny_config()


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """Synthetic data in the real formats + a tiny LLaMA-style tokenizer, made once per session:
    (root, {data set: path} as `synthesize` returns it, tokenizer dir). Tests must not write into it."""
    return make_world(tmp_path_factory.mktemp("world"), n_pretrain=192, n_instruct=96, n_mme_per_subtask=2,
                      n_pope_images=4, n_vqa_images=4, n_caption_images=6)


def make_world(out, **sizes):
    """`synthesize(out, image_size=64, seed=0, **sizes)` + a tiny LLaMA-style tokenizer in
    out/tokenizer: (out, {data set: path}, tokenizer dir)."""
    from mmln.data.synth import synthesize, text_corpus
    from mmln.data.tokenizer import train_tiny_tokenizer

    paths = synthesize(out, image_size=64, seed=0, **sizes)
    tok = train_tiny_tokenizer(text_corpus(2000, seed=0), out / "tokenizer", vocab_size=512)
    return out, paths, tok
