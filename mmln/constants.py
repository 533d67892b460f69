"""Ids shared by the data and model layers (LLaVA's values; plain ints, no torch)."""

IGNORE_INDEX = -100  # label of a position the loss skips (prompt text, image slots, padding)
IMAGE_TOKEN_INDEX = -200  # the one input id that stands for an image; the model splices its embeddings there


def image_positions(vision) -> int:
    """Positions one image takes in the LLM sequence for a `model.vision` config: (image_size /
    patch_size)^2, +1 with the CLS token (`select_feature=cls_patch`). The one definition: the vision
    encoder's `num_patches` returns it, and the data side is handed it."""
    return (vision.image_size // vision.patch_size) ** 2 + (1 if vision.select_feature == "cls_patch" else 0)

# LLaVA-1.5's answer-format suffixes, appended to a question (training data and evaluation prompts alike)
YES_NO_SUFFIX = " Please answer yes or no."
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
