"""A run with data.template=chat_template on a tokenizer without a chat template stops before
training with one line naming the tokenizer and the keys to set (exit 2)."""
from __future__ import annotations

from mmln.fit import main
from tests.conftest import TINY
from tests.test_fit import stage_overrides


def test_chat_template_without_tokenizer_template_is_a_config_error(tiny_world, tmp_path, capsys):
    _, _, tok = tiny_world
    assert main(["--config", str(TINY), *stage_overrides(tiny_world, tmp_path, "instruct",
                                                          "data.template=chat_template")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("error: ") and str(tok) in err and "data.template" in err, err
    assert not list((tmp_path / "outputs").rglob("*.ckpt")) and not list((tmp_path / "outputs").rglob("trainable.safetensors"))
