"""`train.strategy=fsdp2`: fully sharded data parallel (PyTorch's FSDP2, `fully_shard`) through
Lightning's ModelParallelStrategy, for the baselines whose trainable state does not fit one GPU
(full finetuning, MLP tuning at 7B / 13B). FSDP2 shards per parameter, so frozen and trainable
tensors may share a block (FSDP1's flat parameters cannot mix them).

Sharding: each decoder layer is its own FSDP unit, the vision tower another (a native family's
stays in the root unit), the rest of the MLLM (embeddings, final norm, head, connector) the root
unit. On a native family, a rank whose micro-batch has no image runs the vision tower and
projector on a blank image (times 0 in the loss) so that its collectives match the other ranks'.
Under bf16-mixed the units gather their parameters in bf16 and reduce gradients in fp32
(`MixedPrecisionPolicy`): the fp32 master weights and AdamW state stay sharded in fp32. Every rank is one data-parallel replica of the
global batch (the same samples in the same order as DDP).

Checkpoints hold the trainable tensors only, as every mmln checkpoint: the full (unsharded)
trainable state and optimizer state are assembled on rank 0 into one `last.ckpt`; resuming
checks its keys against the strategy before loading (a missing tensor is an error, never a
silent random init). At the end of training the units are unsharded so the run's exports
(trainable.safetensors, adapters) read whole tensors, as after DDP.
"""
from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from mmln.config import ConfigError


def register_outputs() -> None:
    """FSDP2 finds the tensors a module returns with torch's pytree, to hook the backward pass that
    reshards and reduces; MLLMOutput must be a pytree node for the loss inside it to be found."""
    import torch.utils._pytree as pytree

    from mmln.model.mllm import MLLMOutput

    if MLLMOutput not in pytree.SUPPORTED_NODES:
        pytree.register_dataclass(MLLMOutput)


def shard_mllm(mllm, mesh, bf16: bool) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtypes = {p.dtype for p in mllm.parameters()}
    if len(dtypes) > 1 and not bf16:
        raise ConfigError(f"train.strategy=fsdp2 gathers each unit in one dtype; parameters are {sorted(map(str, dtypes))}: "
                          "use train.precision=bf16-mixed, or model.dtype=float32")
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    register_outputs()
    for layer in mllm.decoder_layers():
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    if getattr(mllm, "family", None) is None:
        fully_shard(mllm.vision, mesh=mesh, mp_policy=mp)
    # else the tower stays in the root unit: fully_shard swaps a module's class, and transformers looks up
    # which outputs a model can record by class name, so a sharded LLaVA-OneVision tower recorded no
    # hidden states for its feature layer (decoder layers are no such models: sharding them is safe)
    fully_shard(mllm, mesh=mesh, mp_policy=mp)


def fsdp2_module(cls):
    """`cls` (an MLLMModule) whose model Lightning shards in `configure_model`."""

    class FSDP2(cls):
        def configure_model(self):
            from torch.distributed.fsdp import FSDPModule

            if isinstance(self.mllm, FSDPModule):
                return
            bf16 = str(self.trainer.precision).startswith("bf16")
            shard_mllm(self.mllm, self.device_mesh["data_parallel"], bf16)

        def on_train_batch_start(self, batch, batch_idx):
            super().on_train_batch_start(batch, batch_idx)
            px = batch.get("pixel_values") if isinstance(batch, dict) else None
            self._saw_image = getattr(self, "_saw_image", False) or (isinstance(px, dict) and "pixel_values" in px)

        def on_before_optimizer_step(self, optimizer):
            super().on_before_optimizer_step(optimizer)
            if getattr(self.mllm, "family", None) is None:
                return  # mmln's LLaVA assembly runs its vision unit on every micro-batch
            # a native family's blank image gave the image path's trainables a 0 gradient on every rank;
            # when no rank saw a real image this step they had none, as in one process (or DDP, which
            # leaves a globally unused parameter's grad None): AdamW then skips them, not decays them
            seen = torch.tensor([float(getattr(self, "_saw_image", False))], device=self.device)
            torch.distributed.all_reduce(seen, op=torch.distributed.ReduceOp.MAX)
            self._saw_image = False
            if seen.item() == 0:
                for p in (*self.mllm.vision.parameters(), *self.mllm.connector.parameters()):
                    p.grad = None

        def on_train_end(self):
            from torch.distributed.fsdp import FSDPModule

            for m in self.mllm.modules():  # every rank: the exports then read whole tensors
                if isinstance(m, FSDPModule):
                    m.unshard()

    FSDP2.__name__ = FSDP2.__qualname__ = f"{cls.__name__}FSDP2"
    return FSDP2


class FSDP2Strategy(ModelParallelStrategy):
    """ModelParallelStrategy as mmln runs it: data parallel over every rank (no tensor parallel),
    one full checkpoint file of the trainable tensors."""

    def __init__(self, world_size: int, **kwargs):
        super().__init__(data_parallel_size=world_size, tensor_parallel_size=1, save_distributed_checkpoint=False,
                         **kwargs)

    def lightning_module_state_dict(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        return get_model_state_dict(self.model, options=options)

    def load_checkpoint(self, checkpoint_path, weights_only=None):
        # Lightning loads the tensors non-strictly (the checkpoint has no frozen ones) and drops
        # them from what it returns: check the keys here, then hand them to on_load_checkpoint
        path = Path(self.broadcast(checkpoint_path))
        state = torch.load(path, mmap=True, map_location="cpu", weights_only=True)["state_dict"]
        expected = {n for n, p in self.lightning_module.named_parameters() if p.requires_grad}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"checkpoint '{path}' does not match the configured strategy: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        checkpoint = super().load_checkpoint(path, weights_only=weights_only)
        checkpoint["state_dict"] = state
        return checkpoint
