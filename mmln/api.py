"""The Python API: `mmln.load(config, ckpt)` -> a model that answers questions about images.

    import mmln
    model = mmln.load("conf/demo/stage2.yaml", "demo/outputs/demo_ln/layernorm-lr0.003/trainable.safetensors")
    model.ask("cat.jpg", "What colour is the shape?")                  # -> "red"
    model.ask(["a.jpg", "b.jpg"], ["Is there a circle?", "How many shapes are there?"])  # -> [..., ...]

The model is built exactly as `mmln.evaluate` builds it (`mmln.evaluate.load_model`: the config's
model, its tuning strategy, the checkpoint's tuned tensors) and answers with the evaluation runner
(`mmln.eval.runner.Runner`: the config's chat template, greedy decoding, batched with the KV cache).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

ImageLike = Union[str, Path, "PIL.Image.Image"]  # noqa: F821


class Model:
    """A loaded MLLM with its tokenizer and image processor; `ask` answers (image, question) pairs."""

    def __init__(self, cfg: Any, mllm: Any, tokenizer: Any, image_processor: Any):
        from mmln.eval.runner import Runner, decoding_for

        self.cfg, self.mllm, self.tokenizer = cfg, mllm, tokenizer
        self.runner = Runner(mllm, tokenizer, image_processor, decoding_for(cfg), batch_size=cfg.eval.batch_size,
                             num_workers=0, seed=cfg.eval.seed)

    def check_image(self, image: Optional[ImageLike]) -> None:
        """Raise `ImageTooLargeError` (a ValueError naming the image and the `data.` limit) when the
        image's size, read from its header without decoding it, exceeds the config's limits."""
        from PIL import Image

        check = getattr(self.runner.image_processor, "check", None)
        if image is None or check is None:
            return
        if isinstance(image, Image.Image):
            check(image.size)
            return
        with Image.open(image) as im:  # the header only: nothing is decoded here
            check(im.size, str(image))

    def ask(self, image: Union[ImageLike, Sequence[ImageLike], None],
            question: Union[str, Sequence[str]]) -> Union[str, list[str]]:
        """One answer for one (image, question); a list of answers for lists (one image for all
        questions, or one per question). `image=None` asks a text-only question."""
        from PIL import Image

        from mmln.eval.runner import Query, human

        from mmln.data.images import pair_questions

        single, images, questions = pair_questions(image, question)
        for im in images:
            self.check_image(im)
        queries = [Query([human(("<image>\n" if im is not None else "") + q)],
                         im if im is None or isinstance(im, Image.Image) else Path(im))
                   for im, q in zip(images, questions)]
        answers = self.runner.generate(queries)
        return answers[0] if single else answers


def load(config: Union[str, Path, Any], ckpt: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> Model:
    """The model of `config` (a YAML path, a loaded config, or a checkpoint directory: a native
    family's or llava-hf's transformers directory, e.g. an `export --format hf`, is `model.init_from`;
    an mmln `llava` export, its `config.yaml`) with the tuned tensors of `ckpt` (a run's
    `trainable.safetensors` or `checkpoints/last.ckpt`; None or "none" = untuned)."""
    from omegaconf import DictConfig

    from mmln.config import load_config
    from mmln.evaluate import load_model

    if not isinstance(config, DictConfig) and Path(config).is_dir():
        if (Path(config) / "config.yaml").is_file():  # mmln's `llava` export
            config = Path(config) / "config.yaml"
        else:
            overrides = [f"model.init_from={Path(config).resolve()}", *overrides]
            config = None
    cfg = config if isinstance(config, DictConfig) else load_config(config, list(overrides), require=("model",))
    ckpt = None if ckpt is None or str(ckpt).lower() == "none" else str(ckpt)
    if ckpt and not Path(ckpt).is_file():
        raise FileNotFoundError(f"--ckpt {ckpt}: no such file (a run's trainable.safetensors or checkpoints/last.ckpt)")
    from mmln.families import native_family

    if native_family(cfg.model) is not None:  # a native VLM: its own processor, template and generate
        from mmln.run.build import build_model
        from mmln.model.families.answer import FamilyAnswerer

        return FamilyAnswerer(cfg, build_model(cfg, ckpt))
    return Model(cfg, *load_model(cfg, ckpt))
