"""The MLLM: splicing, truncation, generation, features, and loading real on-disk checkpoint formats."""
import pytest
import torch
from safetensors.torch import save_file

from mmln.model import IGNORE_INDEX, IMAGE_TOKEN_INDEX, MissingWeightsError, build_mllm, save_mm_projector
from mmln.model.connector import connector_state_from_file
from tests.conftest import tiny_config

P = 16  # tiny preset: (64 / 16) ** 2 patches


def test_image_features_land_at_the_placeholder_with_ignored_labels():
    cfg = tiny_config()
    m = build_mllm(cfg.model).eval()
    ids = torch.tensor([[1, 7, 8, IMAGE_TOKEN_INDEX, 9, 10], [1, IMAGE_TOKEN_INDEX, 11, 2, 0, 0]])
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])
    labels = torch.where(mask.bool(), ids, IGNORE_INDEX)
    labels[labels == IMAGE_TOKEN_INDEX] = IGNORE_INDEX
    img = torch.randn(2, P, cfg.model.llm.hidden_size)
    s = m.splice(ids, img, mask, labels)
    emb = m.llm.get_input_embeddings()
    assert s.inputs_embeds.shape == (2, 6 - 1 + P, 64)
    assert torch.equal(s.inputs_embeds[0, 3:3 + P], img[0])
    assert torch.equal(s.inputs_embeds[0, :3], emb(ids[0, :3]))
    assert torch.equal(s.inputs_embeds[0, 3 + P:], emb(ids[0, 4:]))
    assert (s.labels[0, 3:3 + P] == IGNORE_INDEX).all() and s.labels[0, 3 + P].item() == 9
    assert s.image_mask[0].sum() == P and s.image_mask[0, 3:3 + P].all()
    # sample 2: right padded after its 3 + P real positions
    assert s.attention_mask[1].tolist() == [1] * (3 + P) + [0] * 2
    assert torch.equal(s.inputs_embeds[1, 1:1 + P], img[1]) and (s.labels[1, 3 + P:] == IGNORE_INDEX).all()
    left = m.splice(ids, img, mask, padding_side="left")
    assert left.attention_mask[1].tolist() == [0] * 2 + [1] * (3 + P)
    assert torch.equal(left.inputs_embeds[1, 3:3 + P], img[1])


def test_truncation_happens_after_expansion():
    cfg = tiny_config("model.max_length=20")
    m = build_mllm(cfg.model)
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6, 7, 8, 9, 10]])
    labels = ids.clone()
    labels[0, :3] = IGNORE_INDEX
    s = m.splice(ids, torch.randn(1, P, 64), None, labels)
    assert s.inputs_embeds.shape[1] == 20  # 2 + 16 + 6 = 24 -> 20: the last 4 text tokens are cut
    assert s.labels[0, -2:].tolist() == [6, 7]


def test_placeholder_image_count_mismatch_is_an_error():
    m = build_mllm(tiny_config().model)
    with pytest.raises(ValueError, match="2 image placeholders but 1 images"):
        m.splice(torch.tensor([[1, IMAGE_TOKEN_INDEX, IMAGE_TOKEN_INDEX]]), torch.randn(1, P, 64))


def test_loss_is_the_token_mean_over_the_micro_batch():
    cfg = tiny_config("model.loss_chunk=0")  # the full-logits loss; chunked parity: test_loss.py
    m = build_mllm(cfg.model).eval()
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5, 6, 7], [1, IMAGE_TOKEN_INDEX, 8, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    labels = torch.tensor([[-100, -100, 5, 6, 7], [-100, -100, -100, 9, -100]])
    px = torch.randn(2, 3, 64, 64)
    out = m(ids, mask, labels, pixel_values=px)
    assert out.n_tokens == 4
    logits, lab = out.logits[:, :-1].float(), torch.cat([labels.new_full((2, P), -100), labels[:, 2:]], 1)
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab.reshape(-1),
                                                  ignore_index=-100, reduction="sum")
    assert torch.allclose(out.loss, per_token / 4, atol=1e-6)


def greedy_by_hand(m, ids, px, eos, max_new):
    """No KV cache: re-run the full spliced sequence each step."""
    feats = m.project(m.encode_images(px))
    emb = m.splice(ids, feats).inputs_embeds
    out = []
    for _ in range(max_new):
        nxt = int(m.llm(inputs_embeds=emb).logits[0, -1].argmax())
        out.append(nxt)
        if nxt == eos:
            break
        emb = torch.cat([emb, m.llm.get_input_embeddings()(torch.tensor([[nxt]]))], 1)
    return out


def test_generate_equals_a_hand_written_greedy_loop_batched():
    torch.manual_seed(3)
    m = build_mllm(tiny_config().model).eval()
    prompts = [[1, 5, IMAGE_TOKEN_INDEX, 6, 7, 8], [1, IMAGE_TOKEN_INDEX, 9]]
    px = torch.randn(2, 3, 64, 64)
    expected = [greedy_by_hand(m, torch.tensor([p]), px[i:i + 1], eos=2, max_new=12) for i, p in enumerate(prompts)]
    # eos = a token the random model actually emits, so stopping is exercised
    eos = expected[0][3]
    expected = [greedy_by_hand(m, torch.tensor([p]), px[i:i + 1], eos=eos, max_new=12) for i, p in enumerate(prompts)]
    T = max(map(len, prompts))
    ids = torch.tensor([p + [0] * (T - len(p)) for p in prompts])
    mask = torch.tensor([[1] * len(p) + [0] * (T - len(p)) for p in prompts])
    got = m.generate(ids, mask, px, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    for row, exp in zip(got.tolist(), expected):
        assert row[:len(exp)] == exp
        assert all(t == 0 for t in row[len(exp):])
    assert expected[0][-1] == eos and len(expected[0]) == 4


def test_next_token_logits_agree_with_greedy_first_token():
    m = build_mllm(tiny_config().model).eval()
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6], [1, IMAGE_TOKEN_INDEX, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    px = torch.randn(2, 3, 64, 64)
    first = m.generate(ids, mask, px, max_new_tokens=1)[:, 0]
    assert torch.equal(m.next_token_logits(ids, mask, px).argmax(-1), first)


def test_hf_clip_features_are_the_second_to_last_layer_without_cls():
    m = build_mllm(tiny_config().model)
    px = torch.randn(2, 3, 64, 64)
    hs = m.vision.backbone(pixel_values=px, output_hidden_states=True).hidden_states
    feats = m.encode_images(px)
    assert feats.shape == (2, P, 64) and torch.equal(feats, hs[-2][:, 1:])
    assert not feats.requires_grad


def test_timm_features_are_the_second_to_last_block_without_cls():
    cfg = tiny_config("model.vision.backend=timm", "model.vision.name=vit_base_patch16_224.augreg_in21k")
    m = build_mllm(cfg.model)
    vit = m.vision.backbone
    px = torch.randn(2, 3, 64, 64)
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(px)))
    for blk in vit.blocks[:-1]:
        x = blk(x)
    assert torch.allclose(m.encode_images(px), x[:, 1:], atol=1e-6)


def test_checkpoints_on_disk_load_through_the_real_code_path(tmp_path):
    """Save tiny weights in each real format, then build from paths exactly as real weights are loaded."""
    src = build_mllm(tiny_config().model)
    src.llm.save_pretrained(tmp_path / "llm")
    src.vision.backbone.save_pretrained(tmp_path / "clip")
    save_mm_projector(src.connector, tmp_path / "mm_projector.bin")
    cfg = tiny_config(f"model.llm.path={tmp_path / 'llm'}", f"model.vision.path={tmp_path / 'clip'}",
                      f"model.connector.path={tmp_path / 'mm_projector.bin'}")
    dst = build_mllm(cfg.model)
    for (n, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), n
    assert set(torch.load(tmp_path / "mm_projector.bin")) == {"model.mm_projector.weight", "model.mm_projector.bias"}


def test_timm_weights_and_mlp_connector_load_from_files(tmp_path):
    overrides = ["model.vision.backend=timm", "model.vision.name=vit_base_patch16_224.augreg_in21k",
                 "model.connector.type=mlp2x_gelu"]
    src = build_mllm(tiny_config(*overrides).model)
    save_file(src.vision.backbone.state_dict(), str(tmp_path / "model.safetensors"))
    save_mm_projector(src.connector, tmp_path / "mm_projector.bin")
    assert set(connector_state_from_file(tmp_path / "mm_projector.bin")) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    dst = build_mllm(tiny_config(*overrides, f"model.vision.path={tmp_path}",
                                 f"model.connector.path={tmp_path / 'mm_projector.bin'}").model)
    for (n, a), (_, b) in zip(src.vision.state_dict().items(), dst.vision.state_dict().items()):
        assert torch.equal(a, b), n
    assert torch.equal(src.connector[2].weight, dst.connector[2].weight)


def test_connector_shape_mismatch_is_explained(tmp_path):
    src = build_mllm(tiny_config().model)
    save_mm_projector(src.connector, tmp_path / "mm_projector.bin")
    with pytest.raises(ValueError, match="shape"):
        build_mllm(tiny_config("model.llm.hidden_size=32", f"model.connector.path={tmp_path / 'mm_projector.bin'}").model)


def test_missing_weights_name_the_key_and_the_contents(tmp_path):
    with pytest.raises(MissingWeightsError) as e:
        build_mllm(tiny_config(f"model.llm.path={tmp_path / 'nope'}").model)
    assert "model.llm.path" in str(e.value) and "config.json" in str(e.value)
    with pytest.raises(MissingWeightsError, match="model.vision.path"):
        build_mllm(tiny_config(f"model.vision.path={tmp_path / 'nope'}").model)
