"""A native transformers VLM (Qwen2.5-VL, SmolVLM, LLaVA-OneVision, Gemma-3, ...) behind the
roles every strategy, analysis and export asks `mmln.model.mllm.MLLM` for:

- `vision`     the vision tower (frozen; for Qwen the merger inside it is the connector),
- `connector`  the family's projector (modules and parameters),
- `llm`        the language model with its input embeddings and LM head (`LanguageModel`: a view,
               not a second owner: parameters and state-dict names stay the transformers model's),
- `decoder_layers()`, `forward` (mean next-token cross-entropy, chunked like MLLM's) and `generate`.

The transformers model itself is the one registered child, `model`, so `trainable.safetensors`
names are `model.<its own names>` and an export is its own `save_pretrained`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mmln.base.constants import IGNORE_INDEX
from mmln.families.registry import Family
from mmln.model.mllm import MLLMOutput, chunked_cross_entropy


def resolve(root: nn.Module, path: str):
    """The module or parameter at dotted `path` inside `root`."""
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def autocast_output(module, args, output):
    """A forward hook: `output` in the autocast dtype while autocast is on (else unchanged)."""
    kind = output.device.type
    if torch.is_autocast_enabled(kind) and output.is_floating_point():
        return output.to(torch.get_autocast_dtype(kind))
    return output


class LanguageModel(nn.Module):
    """The language model role: decoder (`get_decoder()`, with `.layers` and the final norm), input
    embeddings and LM head, `config` = the text config. Holds the transformers model's own modules."""

    def __init__(self, decoder: nn.Module, head: nn.Module, config):
        super().__init__()
        self.model, self.lm_head, self.config = decoder, head, config

    def get_decoder(self) -> nn.Module:
        return self.model

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head


class Parts(nn.Module):
    """Modules and bare parameters of one role (e.g. a projector and LLaVA-OneVision's image_newline)."""

    def __init__(self, items: dict):
        super().__init__()
        for k, v in items.items():
            key = k.replace(".", "__")
            if isinstance(v, nn.Parameter):
                self.register_parameter(key, v)
            else:
                self.add_module(key, v)

    def forward(self, *args, **kwargs):  # a view: the transformers model runs its own projector
        raise RuntimeError("the connector of a native VLM runs inside its transformers model")


class NativeVLM(nn.Module):
    def __init__(self, model: nn.Module, family: Family, max_length: int = 2048, loss_chunk: int = 1024):
        super().__init__()
        self.model, self.max_length, self.loss_chunk = model, max_length, loss_chunk
        self.pack_samples = False  # refused at config load (Family.refuses["packing"])
        text_config = getattr(model.config, "text_config", model.config)
        views = {  # not registered as children: the parameters keep one owner and one name
            "family": family,
            "_llm": LanguageModel(resolve(model, family.language_model), resolve(model, family.head), text_config),
            "_connector": Parts({p: resolve(model, p) for p in family.connector}),
        }
        for k, v in views.items():
            object.__setattr__(self, k, v)
        # under autocast the residual stream runs in the compute dtype even when the embeddings train in
        # fp32 (as MLLM casts its spliced inputs): else every block would carry an fp32 residual stream
        self._llm.get_input_embeddings().register_forward_hook(autocast_output)

    @property
    def vision(self) -> nn.Module:
        return resolve(self.model, self.family.vision)

    @property
    def connector(self) -> nn.Module:
        return self._connector

    @property
    def llm(self) -> LanguageModel:
        return self._llm

    def decoder_layers(self) -> nn.ModuleList:
        return self._llm.get_decoder().layers

    def image_token_id(self) -> Optional[int]:
        c = self.model.config
        return next((getattr(c, k) for k in ("image_token_id", "image_token_index") if getattr(c, k, None) is not None),
                    None)

    @torch.no_grad()
    def hidden_states(self, input_ids, attention_mask, pixel_values: Optional[dict] = None):
        """Run the model (no head) for the analyses' block hooks: (attention_mask, image-token mask)."""
        dev = input_ids.device
        extra = {k: v.to(dev) for k, v in dict(pixel_values or {}).items()}
        resolve(self.model, "model")(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)
        return attention_mask, input_ids == self.image_token_id()

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, pixel_values: Optional[dict] = None,
                image_features=None, host=None, blank_image: Optional[dict] = None) -> MLLMOutput:
        """`pixel_values`: the processor's other outputs for the batch (pixel_values, image_grid_thw,
        token_type_ids, ...) as a dict, or None for a text-only batch. `blank_image` (fsdp2, a batch
        without images): a blank image's inputs, run through the vision tower and projector and added
        to the loss times 0, so this rank's collectives (all-gathers, the gradient reduce-scatter of the
        image path's trainables) match the ranks with images (the loss and every gradient stay the same)."""
        if blank_image is None or labels is None:
            return self._forward(input_ids, attention_mask, labels, pixel_values)
        # first, as the ranks with images run their vision unit before the decoder's (the collectives'
        # order must match across ranks; backward then reaches it last, as theirs does)
        feats = self.model.get_image_features(**blank_image)
        used = getattr(feats, "pooler_output", feats)  # the projected features the model splices in
        zero = sum(t.float().sum() for t in _tensors(used) if t.is_floating_point()) * 0.0
        out = self._forward(input_ids, attention_mask, labels, pixel_values)
        return MLLMOutput(out.loss + zero, out.logits, out.n_tokens)

    def _forward(self, input_ids, attention_mask, labels, pixel_values) -> MLLMOutput:
        extra = dict(pixel_values or {})
        out = resolve(self.model, "model")(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                           **extra)
        hidden = out.last_hidden_state
        softcap = getattr(self._llm.config, "final_logit_softcapping", None)
        if labels is not None and self.loss_chunk > 0:
            loss, n = chunked_cross_entropy(hidden, self._llm.lm_head, labels, self.loss_chunk, softcap)
            return MLLMOutput(loss, None, n)
        logits = self._llm.lm_head(hidden)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        if labels is None:
            return MLLMOutput(None, logits, 0)
        targets = labels[:, 1:]
        n = int((targets != IGNORE_INDEX).sum())
        if n == 0:
            return MLLMOutput(logits.sum() * 0.0, logits, 0)
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX)
        return MLLMOutput(loss, logits, n)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 pixel_values: Optional[dict] = None, image_features=None, *, max_new_tokens: int = 64,
                 eos_token_id=None, pad_token_id: int = 0, do_sample: bool = False, temperature: float = 1.0,
                 top_k: Optional[int] = None) -> torch.Tensor:
        """New tokens only (B, <= max_new_tokens), through the family's own `generate` (left-padded input)."""
        kwargs = dict(do_sample=True, temperature=temperature, top_k=top_k) if do_sample else dict(do_sample=False)
        out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                  eos_token_id=eos_token_id, pad_token_id=pad_token_id, use_cache=True,
                                  **dict(pixel_values or {}), **kwargs)
        return out[:, input_ids.shape[1]:]


def _tensors(x):
    """Every tensor inside a tensor, tuple or list (nested)."""
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (tuple, list)):
        for v in x:
            yield from _tensors(v)


def build_native(cfg, family: Family, dtype: torch.dtype, load_weights: bool = True) -> NativeVLM:
    """The family's transformers class from `cfg.init_from`: every weight from the directory (a missing,
    unexpected or mis-shaped key is `MissingWeightsError` naming the directory and keys), or the
    architecture alone from its config.json (`load_weights=False`, e.g. on the meta device)."""
    import transformers
    from transformers import AutoConfig

    from mmln.model.errors import CheckpointError

    cls = getattr(transformers, family.hf_class)
    kw = dict(dtype=dtype, attn_implementation=cfg.attn_implementation)
    if load_weights:
        model, info = cls.from_pretrained(cfg.init_from, output_loading_info=True, **kw)
        bad = {k: sorted(v)[:8] for k, v in info.items() if k in ("missing_keys", "unexpected_keys",
                                                                    "mismatched_keys") and v}
        if bad:
            raise CheckpointError(f"model.init_from={cfg.init_from}: the {family.hf_class} weights do not match "
                                      f"its config: {bad}")
    else:
        model = cls._from_config(AutoConfig.from_pretrained(cfg.init_from), **kw)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return NativeVLM(model, family, max_length=cfg.max_length, loss_chunk=cfg.loss_chunk)
