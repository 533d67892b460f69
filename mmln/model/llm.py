"""The LLM decoder: any Hugging Face causal LM from a local directory, or built from a config."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from mmln.config import LLMConfig
from mmln.model.errors import MissingWeightsError

WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def llm_config(cfg: LLMConfig) -> PretrainedConfig:
    """config.json of `cfg.path` when it exists (architecture only, no weights), else the preset fields."""
    if cfg.path and (Path(cfg.path) / "config.json").is_file():
        return AutoConfig.from_pretrained(cfg.path, local_files_only=True)
    return AutoConfig.for_model(
        cfg.arch,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
        **({"head_dim": cfg.head_dim} if cfg.head_dim else {}),
    )


def check_llm_dir(path: str | None) -> Path:
    needs = "config.json and the weights (model*.safetensors or pytorch_model*.bin), as saved by save_pretrained"
    if not path:
        raise MissingWeightsError("model.llm.path", None, needs)
    p = Path(path)
    if not (p / "config.json").is_file() or not any(next(p.glob(g), None) for g in WEIGHT_GLOBS):
        raise MissingWeightsError("model.llm.path", path, needs)
    return p


def build_llm(cfg: LLMConfig, *, dtype: torch.dtype = torch.float32, load_weights: bool = True,
              attn_implementation: str = "sdpa") -> PreTrainedModel:
    if cfg.path and load_weights:
        from mmln.formats.strict import KINDS, WeightsMismatchError, check_loading_info, describe_dir, model_type

        path = check_llm_dir(cfg.path)
        if model_type(path) in KINDS:  # a llava / CLIP directory: say which key loads it
            raise WeightsMismatchError(f"model.llm.path={path}: expected a causal-LM directory, but "
                                       f"{describe_dir(path)}", "model.llm.path", str(path))
        model, info = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, local_files_only=True, attn_implementation=attn_implementation, output_loading_info=True
        )
        check_loading_info(info, path, "model.llm.path")
        return model
    return AutoModelForCausalLM.from_config(llm_config(cfg), dtype=dtype, attn_implementation=attn_implementation)


def load_tokenizer(cfg: LLMConfig):
    """The LLM's tokenizer from `tokenizer` (else `path`), local files only; pad = unk as LLaVA does for LLaMA;
    `tokenizer_legacy` (when set) pins the LLaMA tokenizer's legacy behaviour."""
    path = cfg.tokenizer or cfg.path
    if not path or not Path(path).is_dir():
        raise MissingWeightsError("model.llm.tokenizer", path,
                                  "the tokenizer files (tokenizer.json or tokenizer.model + tokenizer_config.json)")
    from mmln.formats.trust import check_no_code

    check_no_code(path, "model.llm.tokenizer" if cfg.tokenizer else "model.llm.path")  # no auto_map tokenizer code
    kwargs = {} if cfg.tokenizer_legacy is None else {"legacy": bool(cfg.tokenizer_legacy)}
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True, **kwargs)
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok
