"""Ids and rules shared by the data and model layers (LLaVA's values; plain Python, no torch)."""

IGNORE_INDEX = -100  # label of a position the loss skips (prompt text, image slots, padding)
IMAGE_TOKEN_INDEX = -200  # the one input id that stands for an image; the model splices its embeddings there


def image_positions(vision) -> int:
    """Positions one image takes in the LLM sequence for a `model.vision` config: (image_size /
    patch_size)^2, +1 with the CLS token (`select_feature=cls_patch`). The one definition: the vision
    encoder's `num_patches` returns it, and the data side is handed it."""
    return (vision.image_size // vision.patch_size) ** 2 + (1 if vision.select_feature == "cls_patch" else 0)


def pack_rows(lengths, capacity: int) -> list[list[int]]:
    """`data.batching=packed`'s rows: the indices of `lengths` laid into as few rows of at most
    `capacity` positions as first-fit decreasing finds (longest first, each into the first row it
    fits), then balanced over that many rows (longest first, each into the shortest row, kept
    where it stays within `capacity`), since every row pads to the longest one. The one
    definition: the model packs a micro-batch by it (`MLLM.pack`), and the sampler's
    `data/pad_fraction` counts the padding of the same rows."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows, used = [], []
    for i in order:
        r = next((r for r in range(len(rows)) if used[r] + lengths[i] <= capacity), None)
        if r is None:
            rows.append([])
            used.append(0)
            r = len(rows) - 1
        rows[r].append(i)
        used[r] += lengths[i]
    balanced, load = [[] for _ in rows], [0] * len(rows)
    for i in order:
        r = min(range(len(rows)), key=lambda r: load[r])
        balanced[r].append(i)
        load[r] += lengths[i]
    return balanced if max(load, default=0) <= min(capacity, max(used, default=0)) else rows

# LLaVA-1.5's answer-format suffixes, appended to a question (training data and evaluation prompts alike)
YES_NO_SUFFIX = " Please answer yes or no."
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."

# What one image may cost, checked from its header before decoding (mmln.data.images.ImageLimits;
# the defaults of data.max_image_pixels, data.max_image_aspect and data.max_padded_pixels):
# 64M pixels is an 8000x8000 photo, 192 MB as RGB; an aspect ratio of 100 (far beyond any panorama) bounds
# the shortest-side resize to image_size^2 x 100 pixels (34 MB as RGB at 336 px).
MAX_IMAGE_PIXELS = 64_000_000
MAX_IMAGE_ASPECT = 100.0
MAX_PADDED_PIXELS = 64_000_000

# Evaluation profiles (mmln.eval.profiles says what each means; eval.profile allows these)
PROFILES: tuple[str, ...] = ("official", "paper")
# LLaVA-Instruct's conversation types (mmln.data.records labels them; data.*.types allows these)
CONVERSATION_TYPES: tuple[str, ...] = ("conversation", "detail", "complex_reasoning")
