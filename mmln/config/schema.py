"""The run configuration's schema: one dataclass per group of keys, with their defaults.

OmegaConf builds the structured config from `RunConfig` (`mmln.config.load`); every key a YAML
file or an override sets must be one of `valid_keys()`, and its value is checked against
`mmln.config.rules.RULES`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from mmln.base.constants import MAX_IMAGE_ASPECT, MAX_IMAGE_PIXELS, MAX_PADDED_PIXELS

CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"
PAPER_LRS = [2e-3, 1e-3, 6e-4, 3e-4, 1e-4, 5e-5, 2e-5, 1e-5, 6e-6, 1e-6, 1e-7]


class ConfigError(ValueError):
    """A config problem a user can fix; the message says what and where."""


# --------------------------------------------------------------------------------------- model
@dataclass
class VisionConfig:
    backend: str = "hf_clip"  # hf_clip (transformers CLIPVisionModel) | timm
    name: str = "vit_large_patch14_clip_224.openai"  # timm architecture name (backend=timm)
    path: Optional[str] = None  # local HF dir (hf_clip) or weights file / dir (timm); None = random init
    image_size: int = 224
    patch_size: int = 14
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    select_layer: int = -2  # hidden_states[-2]: output of the second-to-last block
    select_feature: str = "patch"  # patch (CLS dropped) | cls_patch
    preprocess: str = "clip"  # clip (CLIPImageProcessor) | timm (the model's own transforms)


@dataclass
class ConnectorConfig:
    type: str = "linear"  # linear (LLaVA v1) | mlp2x_gelu (LLaVA-1.5)
    path: Optional[str] = None  # stage-1 connector: this project's trainable.safetensors / .ckpt or LLaVA's mm_projector.bin


@dataclass
class LLMConfig:
    path: Optional[str] = None  # local Hugging Face model dir; None = random init from the fields below
    tokenizer: Optional[str] = None  # tokenizer dir; defaults to `path`
    # LLaMA tokenizer `legacy` (True: text after a special token such as </s> gets the "▁" prefix, as
    # LLaVA trained; False: it does not). None = what the tokenizer directory says. Applied to training,
    # evaluation and written into every exported tokenizer.
    tokenizer_legacy: Optional[bool] = None
    arch: str = "llama"  # transformers model_type used when building from the fields below
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: Optional[int] = None
    head_dim: Optional[int] = None  # None = the architecture's default (LLaMA: hidden / heads; Gemma-2: 256)
    vocab_size: int = 32000
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False


@dataclass
class ModelConfig:
    name: str = "custom"  # preset name, used for run names and MLflow tags
    # one directory holding a whole MLLM (llava-hf, or original LLaVA + model.vision.path): weights and
    # the architecture fields below come from it (mmln.formats.init_from)
    init_from: Optional[str] = None
    vision: VisionConfig = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    dtype: str = "auto"  # frozen-weight dtype: auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16
    max_length: int = 2048  # after image expansion
    gradient_checkpointing: bool = False
    loss_chunk: int = 1024  # positions per cross-entropy chunk (no full fp32 logits); 0 = the full-logits loss
    attn_implementation: str = "sdpa"


# -------------------------------------------------------------------------------------- tuning
@dataclass
class LoraConfig:
    r: int = 32  # paper text; LLaVA's TrainingArguments default is 64
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class IA3TuneConfig:
    target_modules: list[str] = field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])  # PEFT's LLaMA default
    feedforward_modules: list[str] = field(default_factory=lambda: ["down_proj"])  # scaled on the input side


@dataclass
class VeraTuneConfig:
    r: int = 256
    d_initial: float = 0.1
    seed: int = 0  # projection_prng_key of the shared random projections
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class TuneConfig:
    # WHAT trains: a tuning strategy of mmln.tuning (layernorm, lora, finetune, ...); `python -m mmln.params
    # --strategy all` lists them. Not to be confused with train.strategy (HOW Lightning runs: ddp, deepspeed).
    strategy: str = "layernorm"
    train_connector: Optional[bool] = None  # None = the strategy's default
    train_embeddings: Optional[bool] = None
    train_head: Optional[bool] = None
    final_norm: bool = True  # layernorm strategies: also tune the final norm
    vision_norms: bool = False  # also tune the vision tower's norms (any strategy; group "vision_norms")
    exclude_norms: list[str] = field(default_factory=list)  # norm module names left frozen, e.g. [q_norm, k_norm]
    lora: LoraConfig = field(default_factory=LoraConfig)  # lora, dora, layernorm_lora
    ia3: IA3TuneConfig = field(default_factory=IA3TuneConfig)
    vera: VeraTuneConfig = field(default_factory=VeraTuneConfig)


# ---------------------------------------------------------------------------------------- data
@dataclass
class DataSplitConfig:
    files: list[str] = field(default_factory=list)  # LLaVA-format JSON arrays; any mix
    image_folder: Optional[str] = None
    types: list[str] = field(default_factory=list)  # conversation | detail | complex_reasoning; [] = all
    type_files: Optional[str] = None  # dir with conversation_58k.json etc.; default = dir of the first file
    limit: Optional[int] = None  # sample this many records (seeded)
    seed: int = 0


@dataclass
class DataConfig:
    template: str = "vicuna_v1"  # plain | vicuna_v1 | llava_llama_2 | chat_template (the tokenizer's own Jinja template)
    train: DataSplitConfig = field(default_factory=DataSplitConfig)
    val: DataSplitConfig = field(default_factory=DataSplitConfig)
    val_fraction: float = 0.0  # carve a seeded validation split out of train when val.files is empty
    image_aspect: str = "square"  # square (center crop) | pad (pad to square with the mean colour)
    on_bad_sample: str = "skip"  # skip (count + report) | error (stop, naming file, record and reason)
    num_workers: int = 2
    batching: str = "length_grouped"  # training micro-batches: length_grouped (similar lengths, little padding) | random
    megabatch: int = 8  # length_grouped: global batches sorted by length together (more = less padding)
    # what one image may cost, checked from its header before it is decoded (a larger one is a bad sample
    # `image_too_large`, or one error line in predict / ask): width x height, long side / short side, and the
    # pad-to-square canvas (image_aspect=pad)
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_image_aspect: float = MAX_IMAGE_ASPECT
    max_padded_pixels: int = MAX_PADDED_PIXELS


# --------------------------------------------------------------------------------------- train
@dataclass
class GroupLRConfig:
    """Learning rate per parameter group (mmln.tuning.selectors.GROUPS); None = `train.lr`."""

    norms: Optional[float] = None
    connector: Optional[float] = None
    embeddings: Optional[float] = None
    head: Optional[float] = None
    adapters: Optional[float] = None
    other: Optional[float] = None  # LLM weights and biases outside the groups above
    vision_norms: Optional[float] = None  # the vision tower's norms (tune.vision_norms=true)


@dataclass
class TrainConfig:
    lr: float = 2e-5
    connector_lr: Optional[float] = None  # alias of group_lr.connector
    group_lr: GroupLRConfig = field(default_factory=GroupLRConfig)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    epochs: int = 1
    max_steps: int = -1
    global_batch_size: int = 128
    micro_batch_size: int = 4
    grad_clip: float = 1.0
    precision: str = "auto"  # auto (bf16-mixed on GPU, 32-true on CPU) | any Lightning precision
    # HOW Lightning runs the training (its `Trainer(strategy=...)`): auto | ddp | deepspeed_stage_2 |
    # deepspeed_stage_3 | path to a DeepSpeed JSON | fsdp2 (mmln.lit.fsdp2). Not tune.strategy, which says WHAT trains.
    strategy: str = "auto"
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    seed: int = 42
    log_every_n_steps: int = 10
    save_every_n_steps: int = 500
    val_every_n_steps: Optional[int] = None
    nonfinite: str = "stop"  # a non-finite gradient / weight: stop (FAILED, last good checkpoint kept) | skip_step
    nonfinite_limit: int = 10  # skip_step: fail once more than this many steps were skipped


@dataclass
class TrackingConfig:
    uri: Optional[str] = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: Optional[str] = None  # default: the config family (file name without the strategy)
    offline: bool = False  # an unreachable tracking server: false = stop at once; true = log to <output_dir>/mlflow-offline.db
    artifact_max_mb: float = 1024.0  # larger run files (a 7B finetune's weights) are logged as a path reference, not copied


@dataclass
class AnalysisConfig:
    # LayerNorm gradient statistics (paper Fig. 4): norm modules by their path inside the LLM decoder, or ["all"]
    grad_norms: list[str] = field(default_factory=lambda: [
        "layers.10.input_layernorm", "layers.10.post_attention_layernorm",
        "layers.20.input_layernorm", "layers.20.post_attention_layernorm",
    ])
    grad_every_n_steps: int = 10  # optimizer steps between recorded gradients; 0 = off
    similarity: bool = True  # cross-layer similarity at the end of training
    similarity_samples: int = 32  # fixed held-out samples (chosen by seed from the validation/training data)
    similarity_seed: int = 0


@dataclass
class EvalConfig:
    profile: str = "official"  # official (model template, greedy) | paper (v0 template, sampling, 3-shot text)
    batch_size: int = 8
    max_new_tokens: int = 64
    yes_no: str = "generate"  # generate | logits (score "Yes" vs "No" from the next-token logits)
    limit: Optional[int] = None  # per benchmark: evaluate only the first N questions / images
    seed: int = 0
    mme_dir: Optional[str] = None  # MME_Benchmark_release_version/
    pope_files: list[str] = field(default_factory=list)  # coco_pope_{random,popular,adversarial}.json
    pope_images: Optional[str] = None  # COCO val2014 images
    vqav2_questions: Optional[str] = None
    vqav2_annotations: Optional[str] = None
    vqav2_images: Optional[str] = None
    coco_karpathy: Optional[str] = None  # dataset_coco.json
    coco_images: Optional[str] = None  # folder holding val2014/ and train2014/
    flickr30k_karpathy: Optional[str] = None  # dataset_flickr30k.json
    flickr30k_images: Optional[str] = None


@dataclass
class DebugConfig:
    fail_at_step: Optional[int] = None  # raise after this optimizer step (tests: kill/resume, FAILED runs)
    pause_at_steps: list[int] = field(default_factory=list)  # sleep once when a batch starts at these steps, after writing <run dir>/paused-<step> (tests: a real kill -9 at a chosen moment)


@dataclass
class RunConfig:
    stage: str = "instruct"  # pretrain (stage 1: connector) | instruct (stage 2: a tuning strategy)
    run_name: Optional[str] = None
    output_dir: str = "outputs"
    resume: str = "auto"  # auto (continue from checkpoints/last.ckpt when present) | never | a checkpoint path or URL
    resume_changed_config: bool = False  # continue a checkpoint whose run had other result-changing settings
    quiet: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)


# ---------------------------------------------------------------------------------------- keys
def valid_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (leaves and groups)."""
    out = []
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        out.append(key)
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            out += valid_keys(type(default), key + ".")
    return out
