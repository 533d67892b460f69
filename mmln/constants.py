"""Ids shared by the data and model layers (LLaVA's values; plain ints, no torch)."""

IGNORE_INDEX = -100  # label of a position the loss skips (prompt text, image slots, padding)
IMAGE_TOKEN_INDEX = -200  # the one input id that stands for an image; the model splices its embeddings there

# LLaVA-1.5's answer-format suffixes, appended to a question (training data and evaluation prompts alike)
YES_NO_SUFFIX = " Please answer yes or no."
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
