"""Frozen vision encoders: Hugging Face `CLIPVisionModel` or any timm ViT, from a local path or random.

Features follow LLaVA: the output of the second-to-last transformer block (`select_layer=-2`),
CLIP's post-layernorm not applied, the CLS token dropped (`select_feature="patch"`).
The encoder is always frozen and runs under `torch.no_grad()`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmln.config import VisionConfig
from mmln.base.constants import image_positions
from mmln.model.errors import MissingWeightsError


class VisionEncoder(nn.Module):
    """Pixel values (B, 3, H, W) -> patch features (B, N, hidden). Pure and frozen."""

    def __init__(self, cfg: VisionConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.requires_grad_(False)

    @property
    def hidden_size(self) -> int:
        return self.cfg.hidden_size

    @property
    def num_patches(self) -> int:
        return image_positions(self.cfg)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    def train(self, mode: bool = True) -> "VisionEncoder":
        return super().train(False)  # frozen: never dropout / never training-mode statistics

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.to(self.dtype)
        if self.cfg.backend == "hf_clip":
            out = self.backbone(pixel_values=x, output_hidden_states=True)
            feats = out.hidden_states[self.cfg.select_layer]  # (B, 1 + N, D), CLS first
            prefix = 1
        else:
            index = self.cfg.num_layers + self.cfg.select_layer
            (patches, prefix_tokens), = self.backbone.forward_intermediates(
                x, indices=[index], norm=False, output_fmt="NLC",
                intermediates_only=True, return_prefix_tokens=True,
            )
            feats = torch.cat([prefix_tokens, patches], dim=1)
            prefix = prefix_tokens.shape[1]
        if self.cfg.select_feature == "patch":
            return feats[:, prefix:]
        return feats[:, prefix - 1:]  # the (last) CLS token + patches


def hf_clip_config(cfg: VisionConfig):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        image_size=cfg.image_size, patch_size=cfg.patch_size, projection_dim=cfg.hidden_size,
    )


def build_vision(cfg: VisionConfig, *, load_weights: bool = True) -> VisionEncoder:
    """Build the encoder; weights come from `cfg.path` when set (and `load_weights`), else random init."""
    if cfg.backend == "hf_clip":
        from transformers import CLIPVisionConfig, CLIPVisionModel

        if cfg.path and load_weights:
            path = Path(cfg.path)
            if not (path / "config.json").is_file():
                raise MissingWeightsError(
                    "model.vision.path", cfg.path,
                    "a Hugging Face CLIP directory (config.json + model.safetensors or pytorch_model.bin), "
                    "e.g. a local copy of openai/clip-vit-large-patch14",
                )
            from mmln.formats.strict import check_kind, check_loading_info

            check_kind(path, "model.vision.path", ("clip_vision_model", "clip"))  # e.g. a llava-hf dir: init_from
            hf_cfg = CLIPVisionConfig.from_pretrained(path)
            _check_arch(cfg, hf_cfg.hidden_size, hf_cfg.num_hidden_layers, hf_cfg.image_size, hf_cfg.patch_size)
            backbone, info = CLIPVisionModel.from_pretrained(path, local_files_only=True, output_loading_info=True)
            text_side = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")  # a full CLIP dir
            info["unexpected_keys"] = [k for k in info["unexpected_keys"] if not k.startswith(text_side)]
            check_loading_info(info, path, "model.vision.path")
        elif cfg.path and (Path(cfg.path) / "config.json").is_file():  # architecture only (meta builds)
            hf_cfg = CLIPVisionConfig.from_pretrained(cfg.path)
            backbone = CLIPVisionModel(hf_cfg)
        else:
            backbone = CLIPVisionModel(hf_clip_config(cfg))
    else:
        import timm

        kwargs = dict(
            num_classes=0, img_size=cfg.image_size, patch_size=cfg.patch_size,
            embed_dim=cfg.hidden_size, depth=cfg.num_layers, num_heads=cfg.num_heads,
            mlp_ratio=cfg.intermediate_size / cfg.hidden_size,
        )
        if cfg.path and load_weights:
            path = Path(cfg.path)
            if path.is_dir():
                found = [path / n for n in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
                         if (path / n).is_file()]
                path = found[0] if found else path
            if not path.is_file():
                raise MissingWeightsError(
                    "model.vision.path", cfg.path,
                    f"a timm checkpoint for '{cfg.name}' (model.safetensors or pytorch_model.bin)",
                )
            backbone = timm.create_model(cfg.name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        else:
            backbone = timm.create_model(cfg.name, pretrained=False, **kwargs)
    return VisionEncoder(cfg, backbone)


def _check_arch(cfg: VisionConfig, hidden: int, layers: int, image_size: int, patch: int) -> None:
    want = (cfg.hidden_size, cfg.num_layers, cfg.image_size, cfg.patch_size)
    got = (hidden, layers, image_size, patch)
    if want != got:
        raise ValueError(
            f"model.vision.path {cfg.path} holds hidden={hidden}, layers={layers}, image_size={image_size}, "
            f"patch={patch} but the config says {want}: pick the matching model preset or fix the path"
        )
