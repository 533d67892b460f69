import json
from pathlib import Path

from mmln.params import main, report
from tests.conftest import TINY, tiny_config

CONF = Path(__file__).resolve().parent.parent / "conf"


def tiny_hand_count():
    # CLIP vision tower (tiny preset): hidden 64, mlp 128, 3 layers, 64 px / patch 16 -> 16 patches + CLS
    h, f, n_layers, patches = 64, 128, 3, 16
    vision = h + 3 * 16 * 16 * h + (patches + 1) * h + 2 * h  # class emb, patch conv (no bias), pos emb, pre-LN
    vision += n_layers * (4 * (h * h + h) + 2 * 2 * h + (h * f + f) + (f * h + h)) + 2 * h  # layers, post-LN
    # LLaMA: hidden 64, mlp 128, 2 layers, vocab 512, untied head, no biases, RMSNorm weights only
    v, L = 512, 2
    llm = v * h + L * (4 * h * h + 3 * h * f + 2 * h) + h + v * h
    connector = h * h + h
    norms = L * 2 * h + h
    return vision + llm + connector, norms, connector + 2 * v * h


def test_params_report_equals_a_hand_count():
    total, norms, trio = tiny_hand_count()
    rows = {r["strategy"]: r for r in report(tiny_config(), ["layernorm", "layernorm_simple", "finetune"])}
    assert rows["layernorm_simple"]["total"] == total
    assert rows["layernorm_simple"]["trainable"] == norms
    assert rows["layernorm"]["trainable"] == norms + trio
    assert abs(rows["layernorm"]["percent"] - 100 * (norms + trio) / total) < 1e-9


def test_vicuna7b_counts_match_the_paper_accounting(capsys):
    assert main(["--config", str(CONF / "vicuna7b_ln.yaml"), "--strategy", "all", "--json"]) == 0
    rows = {r["strategy"]: r for r in json.loads(capsys.readouterr().out)}
    clip, llama7b, linear = 303_179_776, 6_738_415_616, 1024 * 4096 + 4096
    assert rows["layernorm"]["total"] == clip + llama7b + linear
    assert rows["layernorm_simple"]["trainable"] == 2 * 32 * 4096 + 4096
    assert rows["layernorm"]["trainable"] == 2 * 32 * 4096 + 4096 + linear + 2 * 32000 * 4096
    assert rows["finetune"]["trainable"] == llama7b + linear
    assert rows["lora"]["total"] > rows["layernorm"]["total"]  # adapters join the denominator
    assert set(rows) >= {"finetune", "lora", "attn_qv", "attn_mlp", "layernorm", "layernorm_simple", "connector",
                         "layernorm_no_connector", "pretrain", "dora", "ia3", "vera", "layernorm_lora", "bitfit"}
    # the zoo, by hand from LLaMA-7B's shapes (32 blocks; q,k,v,o 4096 -> 4096, gate/up 4096 -> 11008, down back)
    outs = 4 * 4096 + 2 * 11008 + 4096  # output sizes of the 7 projections
    lora = 32 * 32 * (4 * (4096 + 4096) + 3 * (4096 + 11008))  # r = 32 times (in + out) of each
    trio = linear + 2 * 32000 * 4096
    norms = 2 * 32 * 4096 + 4096
    assert rows["lora"]["groups"]["adapters"] == lora == 79_953_920
    expect = {"dora": lora + 32 * outs, "ia3": 32 * (4096 + 4096 + 11008), "vera": 32 * (outs + 7 * 256),
              "layernorm_lora": lora}
    for name, adapters in expect.items():
        r = rows[name]
        assert r["groups"]["adapters"] == adapters, name
        assert r["total"] == clip + llama7b + linear + adapters, name  # adapters join the total
        assert r["trainable"] == adapters + trio + (norms if name == "layernorm_lora" else 0), name
    assert rows["layernorm"]["groups"] == {"norms": norms, "connector": linear, "embeddings": 32000 * 4096,
                                           "head": 32000 * 4096, "adapters": 0, "vision_norms": 0,
                                           "other": 0}
    assert rows["layernorm_simple"]["groups"]["norms"] == rows["layernorm_simple"]["trainable"]
    assert "no bias parameters" in rows["bitfit"]["refused"]


def test_params_cli_text_and_errors(capsys):
    assert main(["--config", str(TINY)]) == 0
    assert "layernorm" in capsys.readouterr().out
    assert main(["--config", str(TINY), "tune.strategi=lora"]) == 2
    assert "tune.strategy" in capsys.readouterr().err


def test_params_says_when_it_counts_a_presets_shape_instead_of_the_models(tmp_path, capsys, monkeypatch):
    """The demo's base LM before --prepare-only made it: counted from the preset fields, and said so."""
    from mmln.model.llm import build_llm

    monkeypatch.setenv("MMLN_DEMO_DIR", str(tmp_path / "not-made"))
    assert main(["--config", "conf/demo/stage2.yaml", "--json"]) == 0
    out, err = capsys.readouterr()
    assert f"model.llm.path={tmp_path / 'not-made'}/base_lm has no config.json" in err
    assert "model.vision.path=" in err
    # once the path holds a model, its config.json is counted and nothing is said
    cfg = tiny_config()
    lm = tmp_path / "lm"
    build_llm(cfg.model.llm, load_weights=False).save_pretrained(lm)
    assert main(["--config", str(TINY), f"model.llm.path={lm}"]) == 0
    assert "no config.json" not in capsys.readouterr().err
