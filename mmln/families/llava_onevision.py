"""LLaVA-OneVision: SigLIP tower (`model.vision_tower`), MLP projector + the learned
`image_newline` vector (both the connector role), Qwen2 language model; AnyRes tiles."""
from mmln.families.registry import Family, register

register(Family(
    name="llava_onevision", model_types=("llava_onevision",), hf_class="LlavaOnevisionForConditionalGeneration",
    language_model="model.language_model", vision="model.vision_tower",
    connector=("model.multi_modal_projector", "model.image_newline"),
    refuses={"packing": "AnyRes image features are unpadded per image inside the model; packing is not "
                        "implemented for this family (use data.batching=length_grouped)"},
    description="LLaVA-OneVision (SigLIP, AnyRes tiles, image_newline)",
))
