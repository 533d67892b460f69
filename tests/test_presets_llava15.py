"""The LLaVA-1.5 recipe and the Llama-3-8B-Instruct presets: parsed, and counted by mmln.params
(meta device) against the architectures' published parameter counts."""
from pathlib import Path

from mmln.config import load_config
from mmln.params import report

CONF = Path(__file__).resolve().parent.parent / "conf"
CLIP_336 = 303_179_776 + (577 - 257) * 1024  # ViT-L/14-224 + the longer position table (24 x 24 + CLS)
MLP2X = (1024 * 4096 + 4096) + (4096 * 4096 + 4096)


def test_llava15_recipe_preset():
    cfg = load_config(CONF / "llava15_7b_ln.yaml")
    v, d, t = cfg.model.vision, cfg.data, cfg.train
    assert (v.image_size, v.patch_size, v.select_layer, v.select_feature) == (336, 14, -2, "patch")
    assert v.path.endswith("clip-vit-large-patch14-336") and cfg.model.connector.type == "mlp2x_gelu"
    assert d.image_aspect == "pad" and d.train.files[0].endswith("llava_v1_5_mix665k.json")
    assert (t.lr, t.global_batch_size, t.epochs) == (2e-5, 128, 1) and d.template == "vicuna_v1"
    rows = {r["strategy"]: r for r in report(cfg, ["layernorm_simple"])}
    assert rows["layernorm_simple"]["total"] == CLIP_336 + MLP2X + 6_738_415_616  # Llama-2-7B shapes


def test_llama3_8b_instruct_preset():
    cfg = load_config(CONF / "llama3_8b_instruct_ln.yaml")
    assert cfg.data.template == "chat_template" and cfg.model.llm.num_kv_heads == 8
    assert cfg.model.vision.image_size == 336 and cfg.data.image_aspect == "pad"
    rows = {r["strategy"]: r for r in report(cfg, ["layernorm", "layernorm_simple"])}
    assert rows["layernorm_simple"]["total"] == CLIP_336 + MLP2X + 8_030_261_248  # Meta-Llama-3-8B
    assert rows["layernorm_simple"]["trainable"] == 2 * 32 * 4096 + 4096
    assert rows["layernorm"]["groups"]["embeddings"] == rows["layernorm"]["groups"]["head"] == 128_256 * 4096
