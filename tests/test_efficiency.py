"""Efficiency plumbing: large run files are referenced, not copied, into MLflow's artifact store."""
from __future__ import annotations

import json
import os

import pytest
from mlflow import MlflowClient

from mmln.tracking import log_file_or_reference


def test_large_files_are_logged_as_a_reference(tmp_path):
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.create_run(client.create_experiment("eff", artifact_location=str(tmp_path / "art")))
    small, big = tmp_path / "small.safetensors", tmp_path / "trainable.safetensors"
    small.write_bytes(b"x" * 100)
    big.write_bytes(b"x" * 5000)
    assert log_file_or_reference(client, run.info.run_id, small, 1000) == "small.safetensors"
    assert log_file_or_reference(client, run.info.run_id, big, 1000) == "trainable.safetensors.ref.json"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"small.safetensors", "trainable.safetensors.ref.json"}
    ref = json.loads(open(client.download_artifacts(run.info.run_id, "trainable.safetensors.ref.json", str(tmp_path / "dl"))).read())
    assert ref["bytes"] == 5000 and ref["path"] == str(big.resolve())


@pytest.mark.parametrize("strategy", ["layernorm", "lora"])
def test_a_training_forward_and_backward_never_read_device_memory(strategy):
    """On the meta device any host read of a tensor (`.item()`, `int()`, `.tolist()`, nonzero,
    boolean indexing, transformers' padding check) raises: the micro-step's forward + backward
    runs there from the host copies alone, so on a GPU it needs no host sync."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from mmln.model import build_mllm
    from mmln.model.mllm import HostBatch
    from mmln.tuning import apply_strategy
    from tests.conftest import tiny_config
    from tests.test_loss import batch

    cfg = tiny_config(f"tune.strategy={strategy}")
    m = build_mllm(cfg.model)
    apply_strategy(m, cfg.tune)
    m = m.to("meta").train()
    ids, mask, labels, px = batch()
    moved = move_data_to_device({"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": px,
                                 "host": HostBatch(ids, mask, labels)}, "meta")
    assert moved["input_ids"].is_meta and moved["host"].input_ids.device.type == "cpu"  # Lightning leaves it
    out = m(moved["input_ids"], moved["attention_mask"], moved["labels"], moved["pixel_values"], host=moved["host"])
    out.loss.backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    with pytest.raises((RuntimeError, NotImplementedError)):  # without host copies the splice must read the device
        m(moved["input_ids"], moved["attention_mask"], moved["labels"], moved["pixel_values"])


def test_efficiency_syncs_once_per_optimizer_step(monkeypatch):
    """torch.cuda stubbed (no GPU here): 3 optimizer steps of 4 micro-batches sync 1 + 3 times."""
    from types import SimpleNamespace

    import torch

    from mmln.callbacks.efficiency import Efficiency

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 2**30)
    logged = []
    module = SimpleNamespace(device=torch.device("cuda", 0), last_batch={"tokens": 100, "samples": 4},
                             log_dict=lambda d, **kw: logged.append(d))
    trainer = SimpleNamespace(accumulate_grad_batches=4, world_size=2, global_step=0, log_every_n_steps=1)
    cb = Efficiency(warmup_steps=1)
    cb.on_train_start(trainer, module)
    for i in range(12):
        cb.on_train_batch_start(trainer, module, None, i)
        trainer.global_step = (i + 1) // 4
        cb.on_train_batch_end(trainer, module, None, None, i)
    cb.on_train_end(trainer, module)
    assert len(calls) == 4
    assert cb.steps == 3 and cb.micro_steps == 8 and cb.tokens == 8 * 100 * 2 and len(logged) == 2
    assert cb.summary["perf/peak_mem_gb"] == 1.0 and cb.summary["perf/tokens_per_s"] > 0


def test_efficiency_cpu_step_time_counts_work_not_waiting():
    """`perf/cpu_step_s` is the process's CPU time per micro-step: a step that waits (as a step does
    when other processes hold the cores) adds wall time, not CPU time; a step that computes adds both."""
    import time
    from types import SimpleNamespace

    import torch

    from mmln.callbacks.efficiency import Efficiency

    module = SimpleNamespace(device=torch.device("cpu"), last_batch={"tokens": 10, "samples": 1},
                             log_dict=lambda d, **kw: None)
    trainer = SimpleNamespace(accumulate_grad_batches=1, world_size=1, global_step=0, log_every_n_steps=1)

    def run(step) -> dict:
        cb = Efficiency(warmup_steps=1)
        cb.on_train_start(trainer, module)
        for i in range(4):
            cb.on_train_batch_start(trainer, module, None, i)
            step()
            trainer.global_step = i + 1
            cb.on_train_batch_end(trainer, module, None, None, i)
        cb.on_train_end(trainer, module)
        return cb.summary

    def busy():
        t = time.process_time()
        while time.process_time() - t < 0.05:
            pass

    waiting, working = run(lambda: time.sleep(0.05)), run(busy)
    assert waiting["perf/micro_step_s"] >= 0.05 and waiting["perf/cpu_step_s"] < 0.02
    assert working["perf/cpu_step_s"] >= 0.05
