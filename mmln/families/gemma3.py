"""Gemma-3: SigLIP tower (`model.vision_tower`), pooling projector with its soft-embedding norm
(`model.multi_modal_projector`), Gemma-3 text model with tied head; image tokens attend to each
other bidirectionally (the processor's `token_type_ids` say where images are)."""
from mmln.families.registry import Family, register

register(Family(
    name="gemma3", model_types=("gemma3",), hf_class="Gemma3ForConditionalGeneration",
    language_model="model.language_model", vision="model.vision_tower", connector=("model.multi_modal_projector",),
    text_aligned=("token_type_ids",),
    refuses={"packing": "image tokens attend bidirectionally within each image block (token_type_ids) and "
                        "sliding-window layers build their own masks; packing is not implemented (use "
                        "data.batching=length_grouped)"},
    description="Gemma-3 (SigLIP, pan-and-scan, bidirectional image attention, tied head)",
))
