import torch

from mmln.config import load_config
from mmln.export import export
from mmln.model import build_mllm
from mmln.model.checkpoint import load_trainable, read_trainable, save_trainable
from mmln.tuning import apply_strategy
from tests.conftest import tiny_config


def test_merged_lora_export_gives_the_same_outputs(tmp_path):
    from mmln.data.tokenizer import train_tiny_tokenizer

    tok = train_tiny_tokenizer([f"a red circle number {i} on the left ." for i in range(300)], tmp_path / "tok",
                               vocab_size=320)
    base = build_mllm(tiny_config("model.llm.vocab_size=320").model)  # frozen base weights, saved as real dirs
    base.llm.save_pretrained(tmp_path / "llm")
    base.vision.backbone.save_pretrained(tmp_path / "clip")
    cfg = tiny_config("tune.strategy=lora", "tune.lora.r=4", f"model.llm.tokenizer={tok}",
                      f"model.llm.path={tmp_path / 'llm'}", f"model.vision.path={tmp_path / 'clip'}")
    m = build_mllm(cfg.model)
    apply_strategy(m, cfg.tune)
    m.eval()  # after apply_strategy: LoRA's dropout modules are created in training mode
    with torch.no_grad():  # a "trained" state: non-zero adapters, moved norms and connector
        for n, p in m.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    run_dir = tmp_path / "outputs" / "tiny_ln" / "lora-lr0.001"  # a run's layout: outputs/<experiment>/<run>/
    run_dir.mkdir(parents=True)
    (run_dir / "mlflow_run_id").write_text("0123")
    save_trainable(m, run_dir / "trainable.safetensors")
    out = export(cfg, str(run_dir / "trainable.safetensors"), tmp_path / "export")

    again = load_config(out / "config.yaml")
    from mmln.evaluate import eval_identity, new_run_name

    assert again.run_name == "export-lora-lr0.001"  # evaluations of it are named after the source run
    assert new_run_name(again, None, eval_identity(again, None)) == "eval-tiny-export-lora-lr0.001"
    assert again.tracking.experiment == "tiny_ln"  # and logged into the source run's experiment
    e = build_mllm(again.model).eval()
    assert not any("lora" in n for n, _ in e.named_parameters())
    ids = torch.tensor([[1, -200, 5, 6, 7]])
    px = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(m(ids, pixel_values=px).logits, e(ids, pixel_values=px).logits, atol=1e-5)
    # the trainable-only file also reloads strictly into a fresh model of the same strategy
    fresh = build_mllm(cfg.model)
    apply_strategy(fresh, cfg.tune)
    load_trainable(fresh, read_trainable(run_dir / "trainable.safetensors"))
    assert torch.equal(fresh.connector.weight, m.connector.weight)
