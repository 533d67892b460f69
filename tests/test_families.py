"""Model families (mmln.model.families): native transformers VLMs behind mmln's roles.

Per family, on tiny random checkpoints written by the real classes (`<Family>Config` small +
`save_pretrained`, a tiny tokenizer with the family's real chat template, its own image processor):
labels against an offsets-based truth, loss parity with the family's own forward, counts equal to
PEFT's, and (test_families_fit.py) training, export and reload.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mmln.config import ConfigError, load_config
from tests.conftest import ROOT

FAMILIES = ("qwen2_5_vl", "qwen2_vl", "idefics3", "llava_onevision", "gemma3")
# each family's end-of-turn text, as its real template writes it after an answer (the truth below)
END_OF_TURN = {"qwen2_5_vl": "<|im_end|>", "qwen2_vl": "<|im_end|>", "idefics3": "<end_of_utterance>",
               "llava_onevision": "<|im_end|>", "gemma3": "<end_of_turn>"}
ANSWERS = ["A red cat sits on a mat.", "No", "A blue square and a green circle."]
RECORDS = [
    {"id": "img", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the image?"}, {"from": "gpt", "value": ANSWERS[0]},
        {"from": "human", "value": "Is there a dog?"}, {"from": "gpt", "value": ANSWERS[1]}]},
    {"id": "text", "conversations": [  # a mix665k-style text-only record
        {"from": "human", "value": "Describe the picture."}, {"from": "gpt", "value": ANSWERS[2]}]},
]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    from mmln.model.families.tiny import write_tiny

    root = tmp_path_factory.mktemp("families")
    (root / "img").mkdir()
    Image.fromarray((np.random.RandomState(0).rand(40, 28, 3) * 255).astype("uint8")).save(root / "img" / "a.png")
    (root / "data.json").write_text(json.dumps(RECORDS))
    return root, {f: write_tiny(f, root / f) for f in FAMILIES}


def family_cfg(root, d, *extra):
    return load_config(None, [f"model.init_from={d}", f"data.train.files=[{root / 'data.json'}]",
                              f"data.train.image_folder={root / 'img'}", "data.num_workers=0",
                              "train.micro_batch_size=2", "train.global_batch_size=2", *extra])


def datamodule(cfg):
    from transformers import AutoTokenizer

    from mmln.lit.datamodule import MMLNDataModule

    dm = MMLNDataModule(cfg, AutoTokenizer.from_pretrained(cfg.model.init_from))
    dm.setup()
    return dm


def test_unknown_family_fails_at_config_load_with_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mllama", "architectures": ["MllamaForX"]}))
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"model.init_from={tmp_path}"])
    msg = str(e.value)
    assert "\n" not in msg and "'mllama'" in msg
    for t in ("qwen2_5_vl", "qwen2_vl", "idefics3", "llava_onevision", "gemma3", "llava"):
        assert t in msg
    cli = subprocess.run([sys.executable, "-m", "mmln.params", f"model.init_from={tmp_path}"], cwd=ROOT,
                         capture_output=True, text=True)
    assert cli.returncode == 2 and len(cli.stderr.strip().splitlines()) == 1 and "mllama" in cli.stderr


def test_packing_is_refused_with_one_line(family_dirs):
    from mmln.run.build import build_model

    root, dirs = family_dirs
    with pytest.raises(ConfigError) as e:
        build_model(family_cfg(root, dirs["qwen2_5_vl"], "data.batching=packed"))
    assert "\n" not in str(e.value) and "M-RoPE" in str(e.value)


def supervised_truth(tok, ids: list[int], eot: str) -> list[bool]:
    """Offsets-based truth: decode the ids to the text the model sees, re-tokenize it with offsets
    (must give the same ids), and mark a token supervised iff its characters lie in an answer
    (from the spaces before it) through the end-of-turn text right after it."""
    text = tok.decode(ids, skip_special_tokens=False)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == ids
    regions, at = [], 0
    for answer in ANSWERS:
        k = text.find(answer, at)
        if k < 0:
            continue
        start = k
        while start > 0 and text[start - 1] in " \t":
            start -= 1
        end = k + len(answer)
        assert text.startswith(eot, end), (text[end:end + 20], eot)
        regions.append((start, end + len(eot)))
        at = end
    return [any(s <= a and b <= e for s, e in regions) and b > a for a, b in enc["offset_mapping"]]


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_supervise_exactly_the_assistant_turns(family_dirs, family):
    root, dirs = family_dirs
    dm = datamodule(family_cfg(root, dirs[family]))
    ds = dm.train_set
    for i, n_answers in ((0, 2), (1, 1)):
        s = ds[i]
        assert "bad" not in s, s
        ids, labels = s["input_ids"].tolist(), s["labels"].tolist()
        truth = supervised_truth(ds.tokenizer, ids, END_OF_TURN[family])
        assert [lab != -100 for lab in labels] == truth
        assert all(lab == t for lab, t in zip(labels, ids) if lab != -100)
        assert sum(truth) > 0 and ds.tokenizer.decode([t for t, lab in zip(ids, labels) if lab != -100]).count(
            END_OF_TURN[family]) == n_answers
    # the image sample's length is its real length after the processor's image expansion
    assert ds.lengths()[0] == len(ds[0]["input_ids"]) > len(ds.tokenizer(ds.render(
        [{"role": "user", "content": [{"type": "text", "text": "x"}]}]))["input_ids"])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("chunk", [1024, 0])
def test_loss_equals_the_family_forward(family_dirs, family, chunk):
    from mmln.run.build import build_model

    root, dirs = family_dirs
    cfg = family_cfg(root, dirs[family], f"model.loss_chunk={chunk}", "model.dtype=float32")
    dm = datamodule(cfg)
    batch = dm.collate([dm.train_set[0], dm.train_set[1]])  # an image record and a text-only one
    mllm = build_model(cfg).eval()
    with torch.no_grad():
        ours = mllm(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["pixel_values"])
        theirs = mllm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            labels=batch["labels"], **batch["pixel_values"])
    assert float(ours.loss) == pytest.approx(float(theirs.loss), rel=1e-5, abs=1e-6)
    assert int(ours.n_tokens) == int((batch["labels"][:, 1:] != -100).sum())


@pytest.mark.parametrize("family", FAMILIES)
def test_strategies_count_what_peft_counts(family_dirs, family):
    """lora adapters and the norms of layernorm_simple equal PEFT's own count on the same
    transformers model (PEFT targets chosen by module name, mmln's by type)."""
    from peft import LNTuningConfig, LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from mmln.run.build import build_model
    from mmln.families import get_family
    from mmln.tuning import count_params

    root, dirs = family_dirs
    fam = get_family(family)
    rows = {}
    for strategy in ("lora", "layernorm_simple", "layernorm", "finetune", "attn_qv", "attn_mlp", "dora", "ia3"):
        rows[strategy] = count_params(build_model(family_cfg(root, dirs[family], f"tune.strategy={strategy}")))
    lm = fam.language_model.replace(".", r"\.")
    peft_lora = get_peft_model(AutoModelForImageTextToText.from_pretrained(dirs[family]), LoraConfig(
        r=32, target_modules=rf"{lm}\.layers\.\d+\..*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"))
    assert rows["lora"].groups["adapters"] == peft_lora.get_nb_trainable_parameters()[0]
    base = AutoModelForImageTextToText.from_pretrained(dirs[family])
    norms = [n for n, m in base.named_modules() if n.startswith(fam.language_model + ".")
             and n.rsplit(".", 1)[-1].endswith("norm")]
    peft_ln = get_peft_model(base, LNTuningConfig(target_modules=norms))
    assert rows["layernorm_simple"].trainable == peft_ln.get_nb_trainable_parameters()[0] == rows["layernorm"].groups["norms"]
    for s, r in rows.items():  # the trio and nothing of the vision tower
        assert r.groups["vision_norms"] == 0, s
    assert rows["layernorm"].trainable == sum(rows["layernorm"].groups[g] for g in ("norms", "connector", "embeddings",
                                                                                      "head"))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3"])
def test_vision_norms_train_with_their_own_lr(family_dirs, family):
    from mmln.run.build import build_model
    from mmln.lit.module import param_groups
    from mmln.families import get_family

    root, dirs = family_dirs
    cfg = family_cfg(root, dirs[family], "tune.strategy=layernorm_simple", "tune.vision_norms=true",
                     "train.group_lr.vision_norms=0.5")
    mllm = build_model(cfg)
    fam = get_family(family)
    tower = [p for n, p in mllm.model.named_parameters() if n.startswith("model." + fam.vision.split(".", 1)[1])
             and any(k in n for k in ("norm", "ln_")) and not any(n.startswith(c) for c in fam.connector)]
    assert tower and all(p.requires_grad for p in tower)
    groups = param_groups(mllm, 1e-3, 0.0, None, cfg.train.group_lr)
    vg = [g for g in groups if g["group"] == "vision_norms"]
    assert len(vg) == 1 and vg[0]["lr"] == 0.5 and {id(p) for p in vg[0]["params"]} == {id(p) for p in tower}
    assert not any(p.requires_grad for n, p in mllm.model.named_parameters()
                   if n.startswith("model." + fam.vision.split(".", 1)[1]) and all(id(p) != id(t) for t in tower))


@pytest.mark.parametrize("preset,total,norms", [
    ("qwen2_5_vl_7b", 8_292_166_656, 28 * 2 * 3584 + 3584),
    ("smolvlm_2b", 2_246_272_880, 24 * 2 * 2048 + 2048),
    ("llava_onevision_7b", 8_030_807_584, 28 * 2 * 3584 + 3584),
    ("gemma3_4b", 4_300_079_472, 34 * (4 * 2560 + 2 * 256) + 2560),  # 4 block norms + q/k norms (head_dim 256)
])
def test_presets_count_real_sizes_from_config_json_alone(preset, total, norms):
    """Totals: Qwen2.5-VL-7B-Instruct's and gemma-3-4b-it's equal their published exact counts (the Hub's
    `numParameters`, 8,292,166,656; KerasHub's gemma3 preset metadata and scripts asserting
    `sum(p.numel())` of Gemma3ForConditionalGeneration, 4,300,079,472). SmolVLM-Instruct's and
    llava-onevision-qwen2-7b-ov-hf's are the transformers class built from their public config.json
    on the meta device (no published exact count was found to check them against). Norms: the configs' shapes."""
    out = subprocess.run([sys.executable, "-m", "mmln.params", "--config", f"conf/{preset}_ln.yaml", "--strategy",
                          "all", "--json"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = {r["strategy"]: r for r in json.loads(out.stdout)}
    assert rows["layernorm"]["total"] == total
    assert rows["layernorm_simple"]["trainable"] == norms == rows["layernorm"]["groups"]["norms"]
    assert set(rows) >= {"layernorm", "layernorm_simple", "layernorm_no_connector", "attn_qv", "attn_mlp", "lora",
                         "dora", "ia3", "vera", "layernorm_lora", "finetune"}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3"])
def test_ask_answers_as_the_family_generate_does(family_dirs, family):
    """`mmln.load(cfg).ask` (the family's processor, template and generate) against transformers'
    own pipeline on the same checkpoint: processor + AutoModelForImageTextToText.generate, greedy."""
    import mmln
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmln.model.families.answer import end_of_turn_ids

    root, dirs = family_dirs
    model = mmln.load(family_cfg(root, dirs[family], "eval.max_new_tokens=6", "model.dtype=float32"))
    got = model.ask(root / "img" / "a.png", "What is in the image?")
    assert model.ask([root / "img" / "a.png", None], ["What is in the image?", "Is it red?"])[0] == got

    processor = AutoProcessor.from_pretrained(dirs[family])
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    enc = processor(text=[text], images=[[Image.open(root / "img" / "a.png").convert("RGB")]],
                    add_special_tokens=False, return_tensors="pt")
    ref = AutoModelForImageTextToText.from_pretrained(dirs[family]).eval()
    out = ref.generate(**enc, max_new_tokens=6, do_sample=False, eos_token_id=end_of_turn_ids(processor),
                       pad_token_id=processor.tokenizer.pad_token_id)
    want = processor.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert got == want
