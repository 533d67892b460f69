"""Ids and rules shared by the data and model layers (LLaVA's values; plain Python, no torch)."""

IGNORE_INDEX = -100  # label of a position the loss skips (prompt text, image slots, padding)
IMAGE_TOKEN_INDEX = -200  # the one input id that stands for an image; the model splices its embeddings there


def image_positions(vision) -> int:
    """Positions one image takes in the LLM sequence for a `model.vision` config: (image_size /
    patch_size)^2, +1 with the CLS token (`select_feature=cls_patch`). The one definition: the vision
    encoder's `num_patches` returns it, and the data side is handed it."""
    return (vision.image_size // vision.patch_size) ** 2 + (1 if vision.select_feature == "cls_patch" else 0)


def pack_rows(lengths, capacity: int) -> list[list[int]]:
    """`data.batching=packed`'s rows: the indices of `lengths` laid into rows of at most
    `capacity` positions by first-fit decreasing (longest first, each into the first row it fits).
    The one definition: the model packs a micro-batch by it (`MLLM.pack`), and the sampler's
    `data/pad_fraction` counts the padding of the same rows."""
    rows, used = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r in range(len(rows)) if used[r] + lengths[i] <= capacity), None)
        if r is None:
            rows.append([])
            used.append(0)
            r = len(rows) - 1
        rows[r].append(i)
        used[r] += lengths[i]
    return rows

# LLaVA-1.5's answer-format suffixes, appended to a question (training data and evaluation prompts alike)
YES_NO_SUFFIX = " Please answer yes or no."
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
