from pathlib import Path

import pytest

from mmln.config import ConfigError, RunConfig, flatten, load_config, valid_keys

CONF = Path(__file__).resolve().parent.parent / "conf"
YAMLS = sorted(p for p in CONF.rglob("*.yaml"))


def test_there_are_presets_for_the_five_llms():
    names = {p.name for p in CONF.glob("*_ln.yaml")}
    assert {"vicuna7b_ln.yaml", "llama2_7b_ln.yaml", "llama2_7b_chat_ln.yaml", "llama2_13b_ln.yaml",
            "llama2_13b_chat_ln.yaml"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(CONF)))
def test_every_yaml_loads(path):
    cfg = load_config(path)
    flat = flatten(cfg)  # resolves interpolations too
    assert flat["model.vision.select_layer"] == -2


@pytest.mark.parametrize("name,hidden,layers,heads,mlp", [
    ("vicuna7b", 4096, 32, 32, 11008), ("llama2_7b", 4096, 32, 32, 11008), ("llama2_7b_chat", 4096, 32, 32, 11008),
    ("llama2_13b", 5120, 40, 40, 13824), ("llama2_13b_chat", 5120, 40, 40, 13824),
])
def test_llm_presets_have_the_paper_architectures(name, hidden, layers, heads, mlp):
    llm = load_config(CONF / f"{name}_ln.yaml").model.llm
    assert (llm.hidden_size, llm.num_layers, llm.num_heads, llm.intermediate_size, llm.vocab_size) == (
        hidden, layers, heads, mlp, 32000)


def test_overrides_merge_and_inherit_order():
    cfg = load_config(CONF / "vicuna7b_ln.yaml", ["tune.strategy=lora", "data.train.types=[conversation]",
                                                 "data.train.limit=20000", "train.lr=1e-4"])
    assert cfg.tune.strategy == "lora" and list(cfg.data.train.types) == ["conversation"]
    assert cfg.data.train.limit == 20000 and cfg.train.lr == 1e-4
    assert cfg.stage == "instruct" and cfg.data.template == "vicuna_v1"  # run file wins over inherited presets


def test_unknown_override_names_the_key_and_close_ones():
    with pytest.raises(ConfigError) as e:
        load_config(CONF / "vicuna7b_ln.yaml", ["tune.strategi=lora"])
    msg = str(e.value)
    assert "tune.strategi" in msg and "tune.strategy" in msg


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  llm:\n    hidden: 12\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "model.llm.hidden" in str(e.value) and str(bad) in str(e.value) and "model.llm.hidden_size" in str(e.value)


def test_bad_values_are_rejected():
    with pytest.raises(ConfigError, match="data.template"):
        load_config(None, ["data.template=chatml"])
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["tune.strategy"])


def test_valid_keys_cover_the_schema():
    keys = valid_keys(RunConfig)
    assert {"tune.strategy", "tune.train_connector", "tune.train_embeddings", "tune.train_head", "tune.final_norm",
            "tune.lora.r", "tune.lora.alpha", "tune.lora.dropout", "model.vision.path", "model.llm.path",
            "model.connector.path"} <= set(keys)
