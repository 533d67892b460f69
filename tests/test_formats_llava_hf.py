"""hf-llava export: transformers' LlavaForConditionalGeneration / AutoProcessor / AutoTokenizer load the
directory as it is and reproduce mmln's logits (fp32, <= 1e-5) and greedy tokens, single and padded."""
import pytest
import torch
from PIL import Image

from mmln.run.build import build_model
from mmln.data.images import build_image_processor
from mmln.data.templates import IMAGE_TOKEN_INDEX, encode_prompt, render_prompt, stop_token_ids
from mmln.export import export
from mmln.model.checkpoint import save_trainable
from mmln.model.llm import load_tokenizer
from test_data_helpers import tok_dirs  # noqa: F401  (fixture)
from tests.conftest import tiny_config

CONVS = [  # multi-turn (text after </s>) and single-turn prompts
    [{"from": "human", "value": "<image>\nWhat is on the left?"}, {"from": "gpt", "value": "A red circle."},
     {"from": "human", "value": "And how many are there?"}],
    [{"from": "human", "value": "Describe the image.\n<image>"}],
]


def messages(conv):
    out = []
    for t in conv:
        text = t["value"].replace("<image>", "")
        content = ([{"type": "image"}] if "<image>" in t["value"] else []) + [{"type": "text", "text": text}]
        out.append({"role": "user" if t["from"] == "human" else "assistant", "content": content})
    return out


def image(seed):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(50, 80, 3, generator=g) * 255).to(torch.uint8).numpy())  # not square


@pytest.fixture(scope="module", params=[("lora", "vicuna_v1", "square"), ("layernorm", "llava_llama_2", "pad")],
                ids=["lora-vicuna-square", "layernorm-llama2-pad"])
def exported(request, tmp_path_factory, tok_dirs):  # noqa: F811
    strategy, template, aspect = request.param
    tmp = tmp_path_factory.mktemp("hf")
    tok = load_tokenizer(tiny_config(f"model.llm.tokenizer={tok_dirs[True]}").model.llm)
    cfg = tiny_config(f"tune.strategy={strategy}", "tune.lora.r=4", f"model.llm.tokenizer={tok_dirs[True]}",
                      f"model.llm.vocab_size={len(tok)}",  # the <image> id is past the vocabulary: rows are added
                      f"data.template={template}", f"data.image_aspect={aspect}", "model.vision.select_layer=-2")
    m = build_model(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    save_trainable(m, tmp / "trainable.safetensors")
    out = export(cfg, str(tmp / "trainable.safetensors"), tmp / "export", "hf-llava")
    return cfg, m, tok, out


def test_hf_llava_round_trip(exported):
    from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

    cfg, m, tok, out = exported
    hf = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    proc = AutoProcessor.from_pretrained(out, backend="pil")  # PIL: the backend mmln (and LLaVA) preprocess with
    default = AutoProcessor.from_pretrained(out)  # torchvision backend: antialiased resize, <= 1-2 uint8 levels
    reloaded = AutoTokenizer.from_pretrained(out)
    template, V = cfg.data.template, m.llm.config.vocab_size
    ours_px = build_image_processor(cfg.model.vision, cfg.data.image_aspect)
    # BOS is in the template's text (the exported tokenizer adds none), so a consumer that renders and then
    # tokenizes with or without special tokens (lmms-eval, vLLM) gets one: tests/test_consumer_ids.py
    prompts = [tok.bos_token + render_prompt(template, c) for c in CONVS]
    assert [proc.apply_chat_template(messages(c), add_generation_prompt=True) for c in CONVS] == prompts
    ids = [encode_prompt(template, c, tok) for c in CONVS]
    image_id = hf.config.image_token_index
    for p, want in zip(prompts, ids):  # train tokenizer == exported tokenizer == processor, <image> aside
        for chunk in p.split("<image>"):  # the text either side of the image (</s>USER: ... in the first)
            assert (reloaded(chunk, add_special_tokens=False).input_ids == tok(chunk, add_special_tokens=False).input_ids
                    == proc.tokenizer(chunk).input_ids)  # no BOS of its own
        got = proc(text=p, images=image(0), return_tensors="pt").input_ids[0].tolist()
        collapsed = [t for k, t in enumerate(got) if t != image_id or got[k - 1] != image_id]
        mapped = [IMAGE_TOKEN_INDEX if t == image_id else t for t in collapsed]
        assert mapped == want
        assert got.count(image_id) == m.vision.num_patches

    images = [image(0), image(1)]
    for batch in ([0], [0, 1]):  # single, then a right-padded batch of two lengths
        proc.tokenizer.padding_side = "right"
        inp = proc(text=[prompts[i] for i in batch], images=[images[i] for i in batch], return_tensors="pt",
                   padding=True)
        px = torch.stack([ours_px(images[i]) for i in batch])
        assert (inp.pixel_values - px).abs().max() <= 1e-5  # the image processor config is the run's
        tv = default(text=[prompts[i] for i in batch], images=[images[i] for i in batch], return_tensors="pt",
                     padding=True)
        assert torch.equal(tv.input_ids, inp.input_ids) and (tv.pixel_values - px).abs().max() <= 2.5 / 255 / 0.26
        L = max(len(ids[i]) for i in batch)
        x = torch.tensor([ids[i] + [0] * (L - len(ids[i])) for i in batch])
        mask = torch.tensor([[1] * len(ids[i]) + [0] * (L - len(ids[i])) for i in batch])
        with torch.no_grad():
            ours = m(x, attention_mask=mask, pixel_values=px).logits
            theirs = hf(**inp).logits[..., :V]
        valid = inp.attention_mask.bool()
        assert ours.shape[:2] == theirs.shape[:2]
        assert (ours - theirs)[valid].abs().max() <= 1e-5
        proc.tokenizer.padding_side = "left"  # greedy decoding, left-padded as generation pads
        inp = proc(text=[prompts[i] for i in batch], images=[images[i] for i in batch], return_tensors="pt",
                   padding=True)
        stops = stop_token_ids(template, tok)
        with torch.no_grad():
            want = m.generate(x, attention_mask=mask, pixel_values=px, max_new_tokens=6, eos_token_id=stops,
                              pad_token_id=tok.pad_token_id)
            got = hf.generate(**inp, max_new_tokens=6, do_sample=False)[:, inp.input_ids.shape[1]:]
        assert got.tolist() == want.tolist()


def test_hf_llava_export_needs_no_merge_for_norms_and_carries_the_legacy_flag(exported):
    from mmln.base.io import read_json

    cfg, m, tok, out = exported
    assert read_json(out / "tokenizer_config.json")["legacy"] is True
    if cfg.tune.strategy == "layernorm":
        assert not any("lora" in n for n, _ in m.named_parameters())  # nothing was merged: same module tree


def test_hf_llava_export_imports_back_with_init_from(exported):
    cfg, m, tok, out = exported
    again = build_model(tiny_config(f"model.init_from={out}", "model.llm.vocab_size=7")).eval()  # fields from out
    assert again.connector.__class__ is m.connector.__class__  # linear: folded back from linear_1 / identity
    ids = torch.tensor([encode_prompt(cfg.data.template, CONVS[0], tok)])
    px = build_image_processor(cfg.model.vision, cfg.data.image_aspect)(image(0))[None]
    with torch.no_grad():
        a, b = m(ids, pixel_values=px).logits, again(ids, pixel_values=px).logits
    assert (a - b[..., : a.shape[-1]]).abs().max() <= 1e-5


@pytest.mark.parametrize("pin", [True, False])
def test_tokenizer_legacy_key_pins_training_and_every_export(tmp_path, tok_dirs, pin):  # noqa: F811
    from transformers import AutoTokenizer

    from mmln.formats.llava_hf import save_tokenizer

    text = "USER: hi ASSISTANT: a circle</s>USER: and now"
    for legacy_dir in (True, False):  # whatever the directory says, the key decides
        tok = load_tokenizer(tiny_config(f"model.llm.tokenizer={tok_dirs[legacy_dir]}",
                                         f"model.llm.tokenizer_legacy={pin}").model.llm)
        pieces = tok.convert_ids_to_tokens(tok(text).input_ids)
        after = pieces[pieces.index("</s>") + 1:]
        assert (after[0] == "▁USER") == pin, after  # legacy: "▁USER"; not: "US", "ER"
        save_tokenizer(tok, tmp_path / f"out{legacy_dir}")
        assert AutoTokenizer.from_pretrained(tmp_path / f"out{legacy_dir}")(text).input_ids == tok(text).input_ids
