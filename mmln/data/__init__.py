"""Data: LLaVA record formats, instruct type labelling, templates + label masks, images, Dataset.

- `records`   readers for LLaVA-CC3M-Pretrain-595K and LLaVA-Instruct JSON, type labelling, subsets, splits
- `templates` plain / vicuna_v1 / llava_llama_2 / v0 rendering, tokenization with label masks, stop tokens
- `images`    RGB loading, CLIPImageProcessor-equal preprocessing, pad-to-square, timm transforms
- `dataset`   the torch Dataset, collate, bad-sample markers and `BadSampleLog`
- `tokenizer` a tiny LLaMA-style tokenizer for tests and the demo
- `synth`     synthetic data sets in the real on-disk formats
CLI: `python -m mmln.data synth|check|inspect`. Nothing here imports Lightning or MLflow.
"""
from .dataset import (
    REASONS,
    BadSampleError,
    BadSampleLog,
    Collator,
    LlavaDataset,
    build_datasets,
    pad_token_id,
    truncate,
)
from .images import CLIP_MEAN, CLIP_STD, PAD_COLOR, ClipPreprocess, TimmPreprocess, build_image_processor, load_image
from .records import TYPES, DataError, Record, label_types, load_split, load_train_val, read_records, select
from .templates import (
    DEFAULT_IMAGE_TOKEN,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    TEMPLATES,
    ConversationError,
    Template,
    encode_prompt,
    get_template,
    render_prompt,
    stop_strings,
    stop_token_ids,
    tokenize_conversation,
    tokenizer_image_token,
)
from .tokenizer import train_tiny_tokenizer

__all__ = [
    "REASONS", "BadSampleError", "BadSampleLog", "Collator", "LlavaDataset", "build_datasets",
    "pad_token_id", "truncate", "CLIP_MEAN", "CLIP_STD", "PAD_COLOR", "ClipPreprocess", "TimmPreprocess",
    "build_image_processor", "load_image", "TYPES", "DataError", "Record", "label_types", "load_split",
    "load_train_val", "read_records", "select", "DEFAULT_IMAGE_TOKEN", "IGNORE_INDEX", "IMAGE_TOKEN_INDEX",
    "TEMPLATES", "ConversationError", "Template", "encode_prompt", "get_template", "render_prompt",
    "stop_strings", "stop_token_ids", "tokenize_conversation", "tokenizer_image_token", "train_tiny_tokenizer",
]
