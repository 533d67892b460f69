"""MMLNDataModule: loaders from the config, global batches, exact mid-epoch resume in Lightning."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_data_helpers import synth_data, tok_dirs, toks  # noqa: F401  (fixtures)

from mmln.config import ConfigError, load_config
from mmln.lit.datamodule import MMLNDataModule


def cfg_for(synth_data, tok_dir, *extra):
    return load_config(None, [
        f"model.llm.tokenizer={tok_dir}", f"data.train.files=[{synth_data['cc3m_chat']}]", "data.template=plain",
        "model.vision.image_size=64", "model.vision.patch_size=16", "model.max_length=256",
        "train.global_batch_size=4", "train.micro_batch_size=2", "train.seed=3", "data.num_workers=0", *extra])


def test_loaders_from_config(synth_data, tok_dirs, toks):
    dm = MMLNDataModule(cfg_for(synth_data, tok_dirs[True], "data.val_fraction=0.25"), toks[True])
    dm.setup("fit", world_size=1)
    assert dm.num_train == 18 and dm.has_val and len(dm.val_set) == 6
    assert dm.accumulation == 2 and dm.steps_per_epoch == 4
    assert dm.train_set.num_image_tokens == 16  # (64 / 16)^2
    batches = list(dm.train_dataloader())
    assert len(batches) == 8 and all(b["input_ids"].shape[0] == 2 for b in batches)
    assert batches[0]["pixel_values"].shape == (2, 3, 64, 64)
    ids = [i for b in batches for i in b["ids"]]
    assert len(set(ids)) == 16  # 4 global batches of 4; the incomplete rest is dropped
    assert ids == [i for b in MMLNDataModule(dm.cfg, toks[True]).train_dataloader() for i in b["ids"]]  # seeded
    val = list(dm.val_dataloader())
    assert sum(len(b["ids"]) for b in val) == 6
    dm2 = MMLNDataModule(cfg_for(synth_data, tok_dirs[True]), toks[True], num_image_tokens=7)
    dm2.setup()
    assert not dm2.has_val and dm2.val_dataloader() == [] and dm2.train_set.num_image_tokens == 7


def test_batch_sizes_must_divide(synth_data, tok_dirs, toks):
    dm = MMLNDataModule(cfg_for(synth_data, tok_dirs[True], "train.global_batch_size=6",
                                "train.micro_batch_size=4"), toks[True])
    with pytest.raises(ConfigError, match="global_batch_size"):
        dm.setup("fit", world_size=1)


class Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.seen: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(list(batch["ids"]))
        return (self.w ** 2).sum() * batch["input_ids"].shape[0]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(cfg, tok, tmp, max_steps=-1, ckpt=None) -> list[list[str]]:
    dm = MMLNDataModule(cfg, tok)
    dm.setup("fit", world_size=1)
    module = Recorder()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, max_steps=max_steps, accumulate_grad_batches=dm.accumulation,
        use_distributed_sampler=False, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(tmp),
        callbacks=[ModelCheckpoint(dirpath=tmp / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=3)],
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    return module.seen


@pytest.mark.parametrize("batching", ["length_grouped", "random"])
def test_mid_epoch_resume_is_exact(synth_data, tok_dirs, toks, tmp_path, batching):
    """Stop after 9 optimizer steps (epoch 2, 3 steps in), resume from last.ckpt: the resumed run
    sees exactly the micro-batches the uninterrupted run saw after that point (workers on)."""
    cfg = cfg_for(synth_data, tok_dirs[True], "data.num_workers=1", f"data.batching={batching}")
    full = _fit(cfg, toks[True], tmp_path / "a")
    assert len(full) == 2 * 12  # 24 records -> 6 steps x 2 micro-batches per epoch
    assert full[:12] != full[12:]  # a new permutation each epoch
    head = _fit(cfg, toks[True], tmp_path / "b", max_steps=9)
    assert head == full[:18]
    tail = _fit(cfg, toks[True], tmp_path / "b", ckpt=str(tmp_path / "b" / "ckpt" / "last.ckpt"))
    assert tail == full[18:]


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_at_epoch_boundary(synth_data, tok_dirs, toks, tmp_path, workers):
    cfg = cfg_for(synth_data, tok_dirs[True], f"data.num_workers={workers}")
    full = _fit(cfg, toks[True], tmp_path / "a")
    assert _fit(cfg, toks[True], tmp_path / "b", max_steps=6) == full[:12]
    assert _fit(cfg, toks[True], tmp_path / "b", ckpt=str(tmp_path / "b" / "ckpt" / "last.ckpt")) == full[12:]


def test_length_grouping_pads_less_on_the_instruct_data(synth_data, tok_dirs, toks):
    """Post-expansion lengths (image positions counted) drive the grouping; the same samples are drawn."""
    def dm_for(batching):
        dm = MMLNDataModule(cfg_for(synth_data, tok_dirs[True], f"data.train.files=[{synth_data['instruct_80k']}]",
                                    f"data.train.image_folder={synth_data['instruct_80k'].parent.parent / 'coco/train2017'}",
                                    "data.template=vicuna_v1", "train.global_batch_size=8", "train.micro_batch_size=2",
                                    f"data.batching={batching}"), toks[True])
        dm.setup("fit", world_size=1)
        return dm, [i for b in dm.train_dataloader() for i in b["ids"]]

    (g, ids_g), (r, ids_r) = dm_for("length_grouped"), dm_for("random")
    assert sorted(ids_g) == sorted(ids_r) and ids_g != ids_r
    lengths = g.train_lengths
    ds = g.train_set
    k = next(i for i, n in enumerate(lengths) if n)
    assert lengths[k] == len(ds[k]["input_ids"]) + ds.num_image_tokens - 1
    assert g.train_sampler.pad_fraction() < r.train_sampler.pad_fraction()


def test_packed_pad_fraction_is_the_padding_of_the_packed_rows(synth_data, tok_dirs, toks):
    """Under data.batching=packed, data/pad_fraction counts the rows MLLM.pack lays out (each
    micro-batch: rows x longest row), not the unpacked micro-batches' padding."""
    from mmln.model import build_mllm
    from mmln.model.mllm import HostBatch
    from tests.conftest import tiny_config

    extra = [f"data.train.files=[{synth_data['instruct_80k']}]",
             f"data.train.image_folder={synth_data['instruct_80k'].parent.parent / 'coco/train2017'}",
             "data.template=vicuna_v1", "train.global_batch_size=8", "train.micro_batch_size=4", "model.max_length=512"]
    dms = {}
    for batching in ("random", "packed"):
        dms[batching] = MMLNDataModule(cfg_for(synth_data, tok_dirs[True], *extra, f"data.batching={batching}"), toks[True])
        dms[batching].setup("fit", world_size=1)
    packed, unpacked = dms["packed"], dms["random"]
    unpacked.train_dataloader()
    m = build_mllm(tiny_config("model.max_length=512", "model.llm.vocab_size=600").model).eval()
    total = used = 0
    with torch.no_grad():
        for b in packed.train_dataloader():
            if b["empty"]:  # every sample bad (the synthetic data has some): length 0 in the sampler too
                continue
            s = m.embed_batch(b["input_ids"], b["attention_mask"], b["labels"], b["pixel_values"],
                              host=HostBatch(b["input_ids"], b["attention_mask"], b["labels"]))
            embeds = m.pack(s)[0]
            total += embeds.shape[0] * embeds.shape[1]
            used += int(s.host_attention_mask.sum())
    assert used < total  # rows pad to the longest row of their micro-batch
    assert packed.train_sampler.pad_fraction() == pytest.approx(1 - used / total, abs=1e-12)
    assert packed.train_sampler.micro_batches() == unpacked.train_sampler.micro_batches()
    # not the unpacked padding of the same micro-batches (here packing pads *more*: samples of
    # 150-250 positions leave a short last row, e.g. 180+170+160 | 150, and rows pad to 510)
    assert abs(packed.train_sampler.pad_fraction() - unpacked.train_sampler.pad_fraction()) > 0.05
