"""`train.group_lr` (and its `train.connector_lr` alias) on the param groups the optimizer receives."""
import pytest

from mmln.config import ConfigError, flatten
from mmln.lit.module import module_for
from mmln.model import build_mllm
from mmln.tuning import apply_strategy
from tests.conftest import tiny_config


def optimizer_lrs(*overrides):
    cfg = tiny_config(*overrides)
    mllm = build_mllm(cfg.model)
    apply_strategy(mllm, cfg.tune)
    opt = module_for(cfg, mllm, total_steps=10).configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in mllm.named_parameters()}
    lrs = {names[id(p)]: g["initial_lr"] if "initial_lr" in g else g["lr"] for g in opt.param_groups for p in g["params"]}
    assert len(lrs) == sum(len(g["params"]) for g in opt.param_groups)  # no parameter in two groups
    return cfg, lrs


def test_each_group_gets_its_lr():
    cfg, lrs = optimizer_lrs("tune.strategy=layernorm_lora", "train.lr=1e-4", "train.group_lr.norms=1e-2",
                             "train.group_lr.embeddings=3e-5", "train.group_lr.adapters=2e-4", "train.connector_lr=5e-3")
    def group(n):
        if n.startswith("connector."):
            return 5e-3
        if n == "llm.model.embed_tokens.weight":
            return 3e-5
        if "lora_" in n:
            return 2e-4
        if n.endswith("layernorm.weight") or n == "llm.model.norm.weight":
            return 1e-2
        return 1e-4  # the head: no rate of its own -> train.lr
    assert lrs and all(lr == group(n) for n, lr in lrs.items()), lrs
    assert lrs["llm.lm_head.weight"] == 1e-4
    flat = flatten(cfg)  # what MLflow receives as params
    assert flat["train.group_lr.connector"] == 5e-3 and flat["train.connector_lr"] == 5e-3
    assert flat["train.group_lr.norms"] == 1e-2 and flat["train.group_lr.head"] is None


def test_without_group_rates_everything_is_at_train_lr():
    _, lrs = optimizer_lrs("tune.strategy=layernorm", "train.lr=3e-4")
    assert set(lrs.values()) == {3e-4}


def test_alias_and_group_key_must_agree():
    cfg = tiny_config("train.group_lr.connector=1e-3")
    assert cfg.train.connector_lr == 1e-3
    with pytest.raises(ConfigError, match="train.connector_lr=0.002 and train.group_lr.connector=0.001 disagree"):
        tiny_config("train.group_lr.connector=1e-3", "train.connector_lr=2e-3")
    with pytest.raises(ConfigError, match="unknown config key 'train.group_lr.norm'"):
        tiny_config("train.group_lr.norm=1e-3")
