"""train.strategy=fsdp2 (FSDP2 through Lightning's ModelParallelStrategy) on CPU with 2 gloo
processes: MLP tuning (frozen attention next to trainable MLPs in every layer) trains to the same
tensors as one process, and a run killed after its step-2 checkpoint resumes from a checkpoint of
the trainable tensors only. ~1.5 min on 2 shared cores: two 2-process runs (and one in-process run)
are the least that shows sharding, checkpointing and resuming together."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file

from mmln.fit import fit
from tests.conftest import ROOT, TINY
from tests.test_fit import cfg_for, stage_overrides

BASE = ["tune.strategy=attn_mlp", "train.lr=1e-3", "train.global_batch_size=8", "train.micro_batch_size=2",
        "train.max_steps=4", "train.save_every_n_steps=2", "train.accelerator=cpu"]


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def two_ranks(world, tmp_path, *extra):
    args = stage_overrides(world, tmp_path, "instruct", *BASE, "run_name=sharded", "train.strategy=fsdp2",
                           "train.devices=2", *extra)
    env = {**os.environ, "MMLN_QUIET": "1", "MASTER_PORT": free_port()}
    return subprocess.run([sys.executable, "-m", "mmln.fit", "--config", str(TINY), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)


def test_fsdp2_two_processes_train_checkpoint_and_resume_like_one_process(tiny_world, tmp_path):
    one = fit(cfg_for(tiny_world, tmp_path, "instruct", *BASE, "run_name=one"))
    killed = two_ranks(tiny_world, tmp_path, "debug.fail_at_step=3")
    assert killed.returncode != 0 and "failing on purpose" in killed.stderr, killed.stderr[-3000:]
    ckpt_path = tmp_path / "outputs/tiny_ln/sharded/checkpoints/last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["global_step"] == 2
    saved = set(ckpt["state_dict"])  # whole (unsharded) trainable tensors only: no frozen attention or vision
    assert saved and not any("self_attn" in k or k.startswith("mllm.vision.") for k in saved), sorted(saved)[:5]
    assert any(".mlp." in k for k in saved)
    assert all(type(v) is torch.Tensor for v in ckpt["state_dict"].values())
    assert ckpt["optimizer_states"] and ckpt["optimizer_states"][0]["state"]
    again = two_ranks(tiny_world, tmp_path, "resume=auto")
    assert again.returncode == 0, again.stderr[-3000:]
    a = load_file(str(one.run_dir / "trainable.safetensors"))
    b = load_file(str(tmp_path / "outputs/tiny_ln/sharded/trainable.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), (k, (a[k] - b[k]).abs().max())


def test_a_checkpoint_of_another_strategy_is_refused_under_fsdp2(tiny_world, tmp_path):
    """Keys are checked before Lightning's non-strict load could leave a tensor at random init."""
    import pytest

    from mmln.lit.fsdp2 import FSDP2Strategy

    s = FSDP2Strategy(2)

    class Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
            self.b.requires_grad_(False)

    s._lightning_module = Module()
    torch.save({"state_dict": {"b.weight": torch.zeros(2, 2)}}, tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match=r"missing \['a.bias', 'a.weight'\], unexpected \['b.weight'\]"):
        s.load_checkpoint(tmp_path / "x.ckpt")
