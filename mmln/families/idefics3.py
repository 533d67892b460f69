"""SmolVLM / Idefics3: SigLIP-style tower (`model.vision_model`), pixel-shuffle connector
(`model.connector`), a Llama text model (`model.text_model`); image splitting in the processor."""
from mmln.families.registry import Family, register

register(Family(
    name="idefics3", model_types=("idefics3", "smolvlm"), hf_class="Idefics3ForConditionalGeneration",
    language_model="model.text_model", vision="model.vision_model", connector=("model.connector",),
    refuses={"packing": "image tokens are scattered per row with a padded image batch; packing is not "
                        "implemented for this family (use data.batching=length_grouped)"},
    description="SmolVLM / Idefics3 (image splitting, pixel-shuffle connector)",
))
