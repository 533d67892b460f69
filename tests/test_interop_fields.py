"""Every field a consumer of an export needs, and the one-line errors when a checkpoint does not fit.

- hf-llava exports always name the LLM class (`text_config.architectures`; vLLM's llava loader stops
  with "No model architectures are specified" without it), also for runs started from an original
  LLaVA checkpoint, whose LLM is built from a bare config;
- `preprocessor_config.json` beside `processor_config.json` (transformers 4.x reads the former), and
  the `llava` format's `vision/` carries the image processor; both give mmln's pixels;
- a LoRA checkpoint of another rank, alpha or target set than the config's: exit 2, one line naming both.
"""
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from mmln.run.build import build_model
from mmln.config import to_yaml
from mmln.data.images import build_image_processor
from mmln.export import export, main
from mmln.model.checkpoint import save_trainable
from test_data_helpers import tok_dirs  # noqa: F401  (fixture)
from test_formats_init_from import tiny_llava
from tests.conftest import TINY, tiny_config


def original_llava(tmp_path):
    """An original LLaVA (LlavaLlamaForCausalLM) checkpoint + its CLIP tower directory."""
    hf = tiny_llava()
    hf.model.vision_tower.save_pretrained(tmp_path / "clip")
    state = {"model." + k: v for k, v in hf.model.language_model.state_dict().items()}
    state["lm_head.weight"] = hf.lm_head.weight
    state |= {"model.mm_projector." + k.replace("linear_1.", "0.").replace("linear_2.", "2."): v
              for k, v in hf.model.multi_modal_projector.state_dict().items()}
    d = tmp_path / "llava-v1.5"
    d.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(d / "model.safetensors"), metadata={"format": "pt"})
    conf = hf.config.text_config.to_dict() | {
        "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"], "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch"}
    (d / "config.json").write_text(json.dumps(conf, default=str))
    return d, tmp_path / "clip"


def test_export_of_an_original_llava_run_names_its_llm_class(tmp_path, tok_dirs):  # noqa: F811
    # fails on main: text_config.architectures is null
    from transformers import AutoConfig

    d, clip = original_llava(tmp_path)
    cfg = tiny_config(f"model.init_from={d}", f"model.vision.path={clip}", f"model.llm.tokenizer={tok_dirs[True]}")
    out = export(cfg, None, tmp_path / "hf", "hf-llava")
    assert json.loads((out / "config.json").read_text())["text_config"]["architectures"] == ["LlamaForCausalLM"]
    assert AutoConfig.from_pretrained(out).text_config.architectures == ["LlamaForCausalLM"]


def image():
    g = torch.Generator().manual_seed(0)
    return Image.fromarray((torch.rand(50, 80, 3, generator=g) * 255).to(torch.uint8).numpy())


@pytest.mark.parametrize("aspect", ["pad", "square"])
def test_image_processor_configs_beside_every_export(tmp_path, tok_dirs, aspect):  # noqa: F811
    # fails on main: no preprocessor_config.json in the hf-llava export, none in the llava format's vision/
    from transformers import AutoImageProcessor

    cfg = tiny_config(f"model.llm.tokenizer={tok_dirs[True]}", f"data.image_aspect={aspect}")
    hf = export(cfg, None, tmp_path / "hf", "hf-llava")
    llava = export(cfg, None, tmp_path / "llava", "llava")
    want = build_image_processor(cfg.model.vision, aspect)(image())
    for d in (hf, llava / "vision"):
        conf = json.loads((d / "preprocessor_config.json").read_text())
        # the fields transformers 4.x's LlavaImageProcessor reads (slow, PIL: LLaVA's own preprocessing)
        assert conf["image_processor_type"] == "LlavaImageProcessor" and conf["do_pad"] == (aspect == "pad")
        assert conf["size"] == {"shortest_edge": 64} and conf["crop_size"] == {"height": 64, "width": 64}
        got = AutoImageProcessor.from_pretrained(d, backend="pil")(image(), return_tensors="pt").pixel_values[0]
        assert (got - want).abs().max() <= 1e-5
    assert (hf / "processor_config.json").is_file()


@pytest.fixture
def lora_run(tmp_path):
    cfg = tiny_config("tune.strategy=lora", "tune.lora.r=4", "tune.lora.alpha=16")
    run = tmp_path / "run"
    run.mkdir()
    save_trainable(build_model(cfg), run / "trainable.safetensors")
    return cfg, run


def one_line_exit_2(capsys, run, *overrides) -> str:
    rc = main(["--config", str(TINY), "--ckpt", str(run / "trainable.safetensors"), "--out", str(run / "x"),
               "tune.strategy=lora", *overrides])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_lora_rank_mismatch_is_one_line_naming_both(lora_run, capsys):
    # fails on main: a raw torch size-mismatch traceback (exit 1)
    cfg, run = lora_run
    err = one_line_exit_2(capsys, run, "tune.lora.r=8", "tune.lora.alpha=16")
    assert "its rank is 4 in the checkpoint, tune.lora.r=8 in the config" in err
    assert "lora_A" in err or "lora_B" in err


def test_lora_alpha_and_target_mismatch_are_one_line_naming_both(lora_run, capsys, tok_dirs):  # noqa: F811
    cfg, run = lora_run
    (run / "config.yaml").write_text(to_yaml(cfg))  # the run's own config, as mmln.fit writes it
    err = one_line_exit_2(capsys, run, "tune.lora.r=4", "tune.lora.alpha=32")  # alpha: no tensor shows it
    assert "tune.lora.alpha=16" in err and "tune.lora.alpha=32" in err
    err = one_line_exit_2(capsys, run, "tune.lora.r=4", "tune.lora.alpha=16", "tune.lora.target_modules=[q_proj]")
    assert "tune.lora.target_modules=['q_proj']" in err and "'down_proj'" in err
    (run / "config.yaml").unlink()  # without the run's config: the tensors themselves say it
    err = one_line_exit_2(capsys, run, "tune.lora.r=4", "tune.lora.target_modules=[q_proj]")
    assert "does not match the configured strategy" in err
    assert main(["--config", str(TINY), "--ckpt", str(run / "trainable.safetensors"), "--out", str(run / "ok"),
                 "tune.strategy=lora", "tune.lora.r=4", f"model.llm.tokenizer={tok_dirs[True]}"]) == 0  # right: exports
