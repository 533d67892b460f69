"""Shared fixtures: tiny models built from the `conf/model/tiny.yaml` preset, an isolated MLflow store."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "conf" / "model" / "tiny.yaml"

os.environ.setdefault("MMLN_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Every test: fixed seeds, default dtype restored, MLflow writes to a store in tmp_path."""
    torch.manual_seed(0)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    yield
    torch.set_default_dtype(torch.float32)


def tiny_config(*overrides: str):
    from mmln.config import load_config

    return load_config(TINY, list(overrides))


@pytest.fixture
def tiny_cfg():
    return tiny_config()
