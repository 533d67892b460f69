"""One way to build a model from a config: seeded, strategy applied, checkpoint loaded; stage checks."""
import subprocess
import sys

import pytest
import torch

from mmln.run.build import build_model
from mmln.config import ConfigError
from mmln.model.checkpoint import save_trainable
from tests.conftest import ROOT, TINY, tiny_config


def test_build_model_is_seeded_and_loads_the_checkpoint(tmp_path):
    cfg = tiny_config("tune.strategy=layernorm_simple", "train.seed=7")
    torch.manual_seed(123)  # whatever the caller's RNG state, the frozen random weights come out the same
    a = build_model(cfg)
    b = build_model(cfg)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(build_model(tiny_config("train.seed=8")).connector.weight, a.connector.weight)
    with torch.no_grad():
        a.llm.model.norm.weight.add_(0.5)
    save_trainable(a, tmp_path / "trainable.safetensors")
    c = build_model(cfg, str(tmp_path / "trainable.safetensors"))
    assert torch.equal(c.llm.model.norm.weight, a.llm.model.norm.weight)
    assert not torch.equal(c.llm.model.norm.weight, b.llm.model.norm.weight)
    with pytest.raises(ConfigError, match="missing"):  # a layernorm checkpoint has no connector tensors
        build_model(tiny_config("tune.strategy=layernorm"), str(tmp_path / "trainable.safetensors"))


def test_image_positions_come_from_the_vision_encoder():
    from mmln.base.constants import image_positions

    cfg = tiny_config("model.vision.select_feature=cls_patch")
    assert build_model(cfg).vision.num_patches == image_positions(cfg.model.vision) == 17


@pytest.mark.parametrize("overrides, match", [
    (["tune.strategy=layernorn"], "Did you mean: layernorm"),
    (["stage=pretrain", "tune.strategy=layernorm"], "stage-'instruct' strategy but stage='pretrain'"),
    (["stage=instruct", "tune.strategy=pretrain"], "set stage=pretrain"),
])
def test_strategy_is_checked_when_the_config_loads(overrides, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(*overrides)


def test_strategy_typo_exits_2_before_any_weight_loads(tmp_path):
    # model.llm.path points nowhere: a build would fail on it, so exit 2 + the strategy message proves the order
    r = subprocess.run([sys.executable, "-m", "mmln.evaluate", "--config", str(TINY), "--ckpt", "none",
                        "--bench", "pope", "tune.strategy=lroa", f"model.llm.path={tmp_path}/none"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert "unknown tuning strategy tune.strategy='lroa'. Did you mean: lora" in r.stderr


def test_strategies_declare_stage_and_hooks():
    from mmln.tuning import REGISTRY

    assert {n for n, s in REGISTRY.items() if s.stage == "pretrain"} == {"pretrain"}
    assert REGISTRY["lora"].merge is not None and REGISTRY["layernorm"].merge is None  # norms: nothing to merge
    assert all(REGISTRY[n].peft_config is not None for n in ("lora", "layernorm", "layernorm_simple"))
    assert REGISTRY["finetune"].peft_config is None
