"""Qwen2-VL and Qwen2.5-VL: dynamic-resolution ViT (`model.visual`) whose patch merger
(`visual.merger`, 2x2 patches -> one token) is the projector; M-RoPE positions come from
`image_grid_thw` (computed by the model from input_ids and the grid: the processor's output)."""
from mmln.families.registry import Family, register

_PACKING = ("M-RoPE positions are computed per row from image_grid_thw; packed rows would need "
            "per-sample 3-D position ids (use data.batching=length_grouped)")
for name, cls, what in (("qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2-VL"),
                        ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2.5-VL")):
    register(Family(
        name=name, model_types=(name,), hf_class=cls,
        language_model="model.language_model", vision="model.visual", connector=("model.visual.merger",),
        text_aligned=("mm_token_type_ids",), refuses={"packing": _PACKING},
        description=f"{what} (dynamic resolution, M-RoPE; merger = projector)",
    ))
