"""Training end to end on CPU: stage chaining, MLflow records, failures, exact resume, DDP, precision."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from mmln.config import load_config
from mmln.fit import fit, main
from tests.conftest import ROOT, TINY, free_port


def stage_overrides(world, tmp_path, stage: str, *extra: str) -> list[str]:
    out, _, tok = world
    common = [f"model.llm.tokenizer={tok}", f"output_dir={tmp_path / 'outputs'}", "data.num_workers=0",
              "train.log_every_n_steps=1", "analysis.grad_every_n_steps=0", "analysis.similarity=false", "quiet=true"]
    if stage == "pretrain":
        return common + ["stage=pretrain", "tune.strategy=pretrain", "data.template=plain", "run_name=stage1",
                         f"data.train.files=[{out / 'cc3m/chat.json'}]", f"data.train.image_folder={out / 'cc3m/images'}",
                         "train.lr=2e-3", "train.global_batch_size=16", "train.micro_batch_size=8", "train.epochs=2",
                         "tracking.experiment=tiny_pretrain", *extra]
    return common + ["stage=instruct", "data.template=vicuna_v1",
                     f"data.train.files=[{out / 'llava_instruct/llava_instruct_80k.json'}]",
                     f"data.train.image_folder={out / 'coco/train2017'}", "train.global_batch_size=8",
                     "train.micro_batch_size=4", "train.epochs=1", "tracking.experiment=tiny_ln", *extra]


def cfg_for(world, tmp_path, stage, *extra):
    return load_config(TINY, stage_overrides(world, tmp_path, stage, *extra))


def losses(run_id: str) -> list[float]:
    return [m.value for m in sorted(MlflowClient().get_metric_history(run_id, "train/loss"), key=lambda m: m.step)]


def test_stage1_then_stage2_chain_and_mlflow_record(tiny_world, tmp_path):
    s1 = fit(cfg_for(tiny_world, tmp_path, "pretrain"), "tiny_pretrain.yaml")
    projector = s1.run_dir / "mm_projector.bin"
    assert set(torch.load(projector)) == {"model.mm_projector.weight", "model.mm_projector.bias"}
    l1 = losses(s1.run_id)
    assert len(l1) == 24 and sum(l1[-4:]) / 4 < sum(l1[:4]) / 4  # 192 samples / 16 x 2 epochs; loss falls
    assert s1.metrics["train/steps"] == 24 and s1.metrics["train/samples_seen"] == 24 * 16  # the run's scale

    s2 = fit(cfg_for(tiny_world, tmp_path, "instruct", f"model.connector.path={projector}",
                     "tune.strategy=layernorm", "train.lr=1e-3", "train.group_lr.norms=2e-3",
                     "train.connector_lr=5e-4"))
    conn = load_file(str(s2.run_dir / "trainable.safetensors"))
    start = torch.load(projector)["model.mm_projector.weight"]
    assert conn["connector.weight"].shape == start.shape and not torch.equal(conn["connector.weight"], start)
    l2 = losses(s2.run_id)
    assert sum(l2[-3:]) / 3 < sum(l2[:3]) / 3

    client = MlflowClient()
    run = client.get_run(s2.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["tune.strategy"] == "layernorm" and run.data.params["train.lr"] == "0.001"
    assert run.data.params["train.group_lr.norms"] == "0.002" and run.data.params["train.group_lr.connector"] == "0.0005"
    assert run.data.params["train.connector_lr"] == "0.0005" and run.data.params["train.group_lr.head"] == ""
    assert run.data.metrics["params/trainable_norms"] == 2 * 2 * 64 + 64  # tiny: 2 blocks x 2 norms + final
    assert run.data.tags["strategy"] == "layernorm" and run.data.tags["stage"] == "instruct"
    for key in ("train/loss", "train/lr", "perf/tokens_per_s", "perf/samples_per_s", "perf/peak_mem_gb", "perf/cpu_step_s",
                "params/trainable", "params/total", "data/pad_fraction", "train/steps", "train/samples_seen"):
        assert key in run.data.metrics, key
    assert run.data.metrics["params/trainable"] == sum(v.numel() for v in conn.values())
    artifacts = {a.path for a in client.list_artifacts(s2.run_id)}
    assert {"config.yaml", "params.json", "trainable.safetensors", "efficiency.json"} <= artifacts
    assert (s2.run_dir / "config.yaml").read_text().count("strategy: layernorm") == 1


def test_a_failing_run_is_recorded_as_failed(tiny_world, tmp_path):
    cfg = cfg_for(tiny_world, tmp_path, "instruct", "debug.fail_at_step=2", "run_name=doomed")
    with pytest.raises(RuntimeError, match="debug.fail_at_step"):
        fit(cfg)
    run_id = (Path(cfg.output_dir) / "tiny_ln" / "doomed" / "mlflow_run_id").read_text()
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED" and "fail_at_step" in run.data.tags["error"]


def test_resume_after_a_kill_is_bit_exact(tiny_world, tmp_path):
    base = ["tune.strategy=lora", "tune.lora.r=4", "train.lr=1e-3", "train.save_every_n_steps=2",
            "train.global_batch_size=8", "train.micro_batch_size=4"]  # 96 records / 8 -> 12 steps, accumulation 2
    ref = fit(cfg_for(tiny_world, tmp_path, "instruct", *base, "run_name=straight"))
    with pytest.raises(RuntimeError):
        fit(cfg_for(tiny_world, tmp_path, "instruct", *base, "run_name=killed", "debug.fail_at_step=5"))
    ckpt = torch.load(Path(tmp_path) / "outputs/tiny_ln/killed/checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4
    saved = set(ckpt["state_dict"])  # trainable tensors only: adapters + trio, no frozen base weight
    assert saved and all("lora_" in k or k.startswith(("mllm.connector.", "mllm.llm.model.embed_tokens",
                                                        "mllm.llm.lm_head")) for k in saved)
    assert {"optimizer_states", "lr_schedulers", "loops", "mmln_rng"} <= set(ckpt)
    again = fit(cfg_for(tiny_world, tmp_path, "instruct", *base, "run_name=killed", "resume=auto"))
    a, b = load_file(str(ref.run_dir / "trainable.safetensors")), load_file(str(again.run_dir / "trainable.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert again.run_id == (again.run_dir / "mlflow_run_id").read_text()  # the same MLflow run continued


def test_a_finished_run_run_again_keeps_its_outputs_and_figures(tiny_world, tmp_path, capsys):
    """A finished run's last.ckpt is at its final step, not at its last periodic save (step 2 of 3 here),
    so resume=auto on it trains nothing, and its efficiency.json, weights and MLflow figures stay
    those of the run that trained (they were rewritten: from the retrained tail, or from the no-op's
    empty clock)."""
    base = ["tune.strategy=layernorm", "train.lr=1e-3", "train.max_steps=3", "train.save_every_n_steps=2",
            "run_name=done"]
    first = fit(cfg_for(tiny_world, tmp_path, "instruct", *base))
    assert torch.load(first.run_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 3
    files = {f: (first.run_dir / f).read_bytes() for f in ("efficiency.json", "trainable.safetensors")}
    logged = MlflowClient().get_run(first.run_id).data.metrics
    assert "perf/tokens_per_s" in first.metrics
    again = fit(cfg_for(tiny_world, tmp_path, "instruct", *base, "resume=auto"))
    assert "had finished" in capsys.readouterr().err
    assert again.run_id == first.run_id and again.metrics == json.loads(files["efficiency.json"])
    assert {f: (first.run_dir / f).read_bytes() for f in files} == files
    run = MlflowClient().get_run(first.run_id)
    assert run.info.status == "FINISHED"
    for key in ("perf/tokens_per_s", "train/wall_s", "train/steps"):
        assert run.data.metrics[key] == logged[key], key


def test_ddp_two_processes_equal_one_process(tiny_world, tmp_path):
    base = ["tune.strategy=layernorm", "train.lr=1e-3", "train.global_batch_size=8", "train.micro_batch_size=2",
            "train.max_steps=4", "train.accelerator=cpu"]
    one = fit(cfg_for(tiny_world, tmp_path, "instruct", *base, "run_name=one"))
    args = stage_overrides(tiny_world, tmp_path, "instruct", *base, "run_name=two", "train.strategy=ddp",
                           "train.devices=2")
    env = {**os.environ, "MMLN_QUIET": "1", "MASTER_PORT": free_port()}
    proc = subprocess.run([sys.executable, "-m", "mmln.fit", "--config", str(TINY), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(one.run_dir / "trainable.safetensors"))
    b = load_file(str(tmp_path / "outputs/tiny_ln/two/trainable.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k


def test_norms_move_at_lr_1e6_with_fp32_trainables_but_not_in_pure_bf16():
    """The GPU precision setting: bf16 frozen weights, fp32 norm gains, bf16 autocast (here on CPU)."""
    from mmln.model import build_mllm
    from mmln.tuning import apply_strategy
    from tests.conftest import tiny_config

    def one_step(pure_bf16: bool) -> float:
        torch.manual_seed(0)
        cfg = tiny_config("model.dtype=bfloat16", "tune.strategy=layernorm_simple")
        m = build_mllm(cfg.model)
        apply_strategy(m, cfg.tune)
        if pure_bf16:
            m.to(torch.bfloat16)
        w = m.llm.model.layers[0].input_layernorm.weight
        before = w.detach().clone()
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-6, weight_decay=0.0)
        ids = torch.tensor([[1, -200, 5, 6, 7, 8]])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(ids, torch.ones_like(ids), torch.tensor([[-100, -100, 5, 6, 7, 8]]),
                     pixel_values=torch.randn(1, 3, 64, 64)).loss
        loss.backward()
        opt.step()
        assert w.dtype == (torch.bfloat16 if pure_bf16 else torch.float32)
        return float((w.detach().float() - before.float()).abs().max())

    assert one_step(pure_bf16=False) > 5e-7  # Adam's first step moves every entry by ~lr
    assert one_step(pure_bf16=True) == 0.0  # 1 +- 1e-6 rounds back to 1.0 in bf16


def test_missing_weights_end_with_one_message(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MMLN_WEIGHTS", str(tmp_path / "nowhere"))
    monkeypatch.setenv("MMLN_DATA", str(tmp_path / "nodata"))
    assert main(["--config", str(ROOT / "conf/vicuna7b_ln.yaml")]) == 2
    err = capsys.readouterr().err
    assert "model.llm.path" in err and "model.vision.path" in err and "config.json" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("strategy,stage", [("deepspeed_stage_2", 2), ("deepspeed_stage_3", 3),
                                            ("conf/deepspeed/zero2.json", 2), ("conf/deepspeed/zero3.json", 3)])
def test_deepspeed_strategies_are_built_from_names_and_shipped_configs(strategy, stage):
    """No GPU here, so DeepSpeed never trains in CI: this pins that every documented spelling of
    `train.strategy` yields a Lightning DeepSpeedStrategy with the intended ZeRO stage."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from mmln.fit import lightning_strategy

    s = lightning_strategy(load_config(TINY, [f"train.strategy={ROOT / strategy if strategy.endswith('.json') else strategy}"]))
    assert isinstance(s, DeepSpeedStrategy)
    assert s.config["zero_optimization"]["stage"] == stage


def test_bad_data_ends_with_one_line_exit_2(tiny_world, tmp_path, capsys):
    """An invalid JSON data file, and a bad sample under data.on_bad_sample=error: the one-line message, exit 2."""
    out = tiny_world[0]
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": "1", "conversations": [')
    args = ["--config", str(TINY), *stage_overrides(tiny_world, tmp_path, "instruct", "train.max_steps=2")]
    assert main([*args, f"data.train.files=[{broken}]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {broken} is not valid JSON"), err

    records = json.loads((out / "llava_instruct/llava_instruct_80k.json").read_text())[:8]
    records[0]["image"] = "no_such_image.jpg"
    bad = tmp_path / "bad_sample.json"
    bad.write_text(json.dumps(records))
    assert main([*args, f"data.train.files=[{bad}]", "data.on_bad_sample=error"]) == 2
    text = capsys.readouterr().err
    err = [line for line in text.strip().splitlines() if line.startswith("error:")]
    assert "Traceback" not in text and len(err) == 1 and f"bad sample in {bad}" in err[0] and "missing_image" in err[0], err


def test_the_progress_bar_total_respects_max_steps(tiny_world, tmp_path, capfd, monkeypatch):
    """2 optimizer steps of 2 micro-batches: the bar counts to 4, not to the epoch's length."""
    import re

    monkeypatch.setenv("MMLN_QUIET", "0")
    cfg = cfg_for(tiny_world, tmp_path, "instruct", "train.max_steps=2", "quiet=false")
    fit(cfg, None)
    cap = capfd.readouterr()  # Lightning's bar writes to stdout
    totals = {int(t) for t in re.findall(r"\d+/(\d+) \[", cap.out + cap.err)}
    assert totals == {4}, totals


def test_a_sweep_context_tags_the_run_from_its_creation_on(tiny_world, tmp_path):
    """What a sweep passes to fit (no environment variables): a run that failed in its second step
    carries the sweep's id and tags; continuing it under another sweep re-tags it."""
    from mmln.tracking import SweepContext

    base = ["run_name=point", "train.max_steps=3", "train.save_every_n_steps=1"]
    cfg = cfg_for(tiny_world, tmp_path, "instruct", *base, "debug.fail_at_step=2")
    with pytest.raises(RuntimeError, match="debug.fail_at_step"):
        fit(cfg, sweep=SweepContext("sw1", {"config_hash": "abc", "sweep_point": "3"}))
    run_id = (Path(cfg.output_dir) / "tiny_ln" / "point" / "mlflow_run_id").read_text()
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags["sweep_id"] == "sw1" and tags["config_hash"] == "abc" and tags["sweep_point"] == "3"
    assert tags["strategy"] == cfg.tune.strategy and tags["run_dir"].endswith("tiny_ln/point")
    again = fit(cfg_for(tiny_world, tmp_path, "instruct", *base, "resume=auto"),
                sweep=SweepContext("sw2", {"config_hash": "abc", "sweep_point": "4"}))
    assert again.run_id == run_id
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags["sweep_point"] == "4" and MlflowClient().get_run(run_id).info.status == "FINISHED"
    assert "MMLN_SWEEP_ID" not in os.environ
