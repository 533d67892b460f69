"""The two LightningModules: stage 1 (pretrain the connector) and stage 2 (instruction finetuning).

They share the step, the optimizer recipe and trainable-only checkpointing (`MLLMModule`); the
stage-1 module adds LLaVA's `mm_projector.bin` export, the stage-2 module the PEFT adapter export
of strategies that have a PEFT form (`mmln.formats.peft_adapter`). The nn.Module (`mmln.model.MLLM`) and the strategy are built outside and passed in.
"""
from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch

from mmln.model import save_mm_projector
from mmln.model.checkpoint import save_trainable
from mmln.model.mllm import HostBatch


def warmup_cosine(total_steps: int, warmup_ratio: float):
    """Linear warmup over ceil(ratio * total) optimizer steps, then cosine decay to 0 (HF's schedule)."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1) if warmup else 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

    return factor


def param_groups(mllm, lr: float, weight_decay: float, connector_lr: float | None = None,
                 group_lr: dict | None = None) -> list[dict]:
    """AdamW groups over trainable parameters only; no decay on norms, biases (1-D) or embeddings.

    `group_lr` ({norms, connector, embeddings, head, adapters, other: lr or None}, groups as in
    `mmln.tuning.selectors.param_groups_of`) gives a group its own lr; `connector_lr` is its alias
    for the connector. Each optimizer group carries `"group"`: the group name, or "base" at `lr`.
    """
    from mmln.tuning.selectors import param_groups_of

    rates = {k: v for k, v in dict(group_lr or {}).items() if v is not None}
    if connector_lr is not None:
        rates.setdefault("connector", connector_lr)
    embeddings = {id(mllm.llm.get_input_embeddings().weight)}
    group_of = param_groups_of(mllm)
    groups: dict[tuple[str, bool], list] = {}
    for p in mllm.parameters():
        if not p.requires_grad:
            continue
        decay = weight_decay > 0 and p.ndim >= 2 and id(p) not in embeddings
        name = group_of.get(id(p), "other")
        groups.setdefault((name if name in rates else "base", decay), []).append(p)
    return [
        {"params": ps, "lr": rates.get(name, lr), "weight_decay": weight_decay if decay else 0.0, "group": name}
        for (name, decay), ps in groups.items() if ps  # empty groups break ZeRO
    ]


class MLLMModule(L.LightningModule):
    def __init__(self, mllm, cfg, total_steps: int):
        super().__init__()
        self.mllm, self.cfg, self.total_steps = mllm, cfg, total_steps
        self.strict_loading = False  # checkpoints hold trainable tensors only; on_load_checkpoint checks them
        self.last_batch = {"tokens": 0, "samples": 0}
        self.bad_log = None  # set by fit: mmln.data BadSampleLog fed from batch["bad"]

    def on_before_batch_transfer(self, batch, dataloader_idx):
        # CPU copies of ids / mask / labels: splicing and token counts then never read the GPU (no host sync)
        if isinstance(batch, dict) and "input_ids" in batch and not batch.get("empty"):
            batch["host"] = HostBatch(batch["input_ids"], batch["attention_mask"], batch.get("labels"))
        return batch

    def forward(self, batch):
        blank = {"blank_image": batch["blank_image"]} if batch.get("blank_image") is not None else {}
        return self.mllm(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["pixel_values"],
                         host=batch.get("host"), **blank)

    def training_step(self, batch, batch_idx):
        if self.bad_log is not None and batch.get("bad"):
            self.bad_log.add(batch["bad"])
        if batch.get("empty"):
            return None  # every sample of this micro-batch was bad and skipped
        out = self(batch)
        mask = batch["host"].attention_mask if batch.get("host") is not None else batch["attention_mask"]
        self.last_batch = {"tokens": int(mask.sum()) + self._image_tokens(batch),
                           "samples": int(batch["input_ids"].shape[0])}
        self.log("train/loss", out.loss, prog_bar=True, on_step=True, batch_size=batch["input_ids"].shape[0])
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, prog_bar=False)
        return out.loss

    def _image_tokens(self, batch) -> int:
        if isinstance(batch.get("pixel_values"), dict) or not hasattr(self.mllm.vision, "num_patches"):
            return 0  # a native family's processor already expanded the image tokens in input_ids
        n_images = batch["pixel_values"].shape[0] if batch.get("pixel_values") is not None else 0
        return n_images * (self.mllm.vision.num_patches - 1)  # each placeholder id becomes num_patches rows

    def on_train_epoch_end(self):
        if self.bad_log is not None and self.bad_log.total:
            self.print(self.bad_log.summary())

    def validation_step(self, batch, batch_idx):
        if batch.get("empty"):
            return None
        out = self(batch)
        self.log("val/loss", out.loss, prog_bar=True, sync_dist=True, batch_size=batch["input_ids"].shape[0])

    def configure_optimizers(self):
        t = self.cfg.train
        opt = torch.optim.AdamW(param_groups(self.mllm, t.lr, t.weight_decay, t.connector_lr, t.group_lr), lr=t.lr,
                                betas=(0.9, 0.999), eps=1e-8)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(self.total_steps, t.warmup_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------- trainable-only checkpoints
    def on_save_checkpoint(self, checkpoint):
        keep = {"mllm." + n for n, p in self.mllm.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["mmln_rng"] = {"torch": torch.get_rng_state(),
                                  "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def on_load_checkpoint(self, checkpoint):
        keep = {"mllm." + n for n, p in self.mllm.named_parameters() if p.requires_grad}
        got = set(checkpoint["state_dict"])
        if got != keep:
            raise ValueError(
                f"checkpoint does not match the configured strategy '{self.cfg.tune.strategy}': missing "
                f"{sorted(keep - got)[:5]}, unexpected {sorted(got - keep)[:5]}"
            )
        self._resume_rng = checkpoint.get("mmln_rng")

    def on_train_batch_start(self, batch, batch_idx):
        # restore the RNG (dropout) only now: building the resumed data iterator draws from it
        rng, self._resume_rng = getattr(self, "_resume_rng", None), None
        if rng:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def export(self, run_dir: Path) -> list[Path]:
        """Final artifacts of the run, written atomically on rank 0."""
        return [save_trainable(self.mllm, run_dir / "trainable.safetensors")]


class PretrainConnector(MLLMModule):
    """Stage 1: only the connector trains; also exported in LLaVA's format for stage 2 and LLaVA tools."""

    def export(self, run_dir: Path) -> list[Path]:
        return super().export(run_dir) + [save_mm_projector(self.mllm.connector, run_dir / "mm_projector.bin")]


class InstructFinetune(MLLMModule):
    """Stage 2: any tuning strategy. One with a PEFT form (`Strategy.peft_config`: LoRA, norm tuning,
    LayerNorm + LoRA) exports a PEFT adapter directory through `mmln.formats.peft_adapter`
    (`lora_adapter/`, `ln_tuning_adapter/`, `layernorm_lora_adapter/`; trained norms beside adapters,
    embeddings and head as modules_to_save); runs whose strategy injects PEFT adapters itself (dora,
    ia3, vera) export `<strategy>_adapter/` with that PEFT config, the trained embeddings and head
    as modules_to_save the same way (the connector beside it as mm_projector.bin)."""

    def export(self, run_dir: Path) -> list[Path]:
        from mmln.formats.peft_adapter import export_family_peft_adapter, export_peft_adapter

        paths = super().export(run_dir)  # the run's tensors first: they are written whatever follows
        if hasattr(self.mllm, "family"):  # a native family (mmln.model.families): an adapter over its whole class
            out = export_family_peft_adapter(self.mllm, self.cfg, run_dir)
            return paths + ([out] if out is not None else [])
        out = export_peft_adapter(self.mllm, self.cfg, run_dir)
        return paths + ([out] if out is not None else [])


def module_for(cfg, mllm, total_steps: int) -> MLLMModule:
    cls = PretrainConnector if cfg.stage == "pretrain" else InstructFinetune
    if cfg.train.strategy == "fsdp2":
        from mmln.lit.fsdp2 import fsdp2_module

        cls = fsdp2_module(cls)
    return cls(mllm, cfg, total_steps)
