"""Weights from a stranger, checked before any library reads them; every refusal is one line
(`UntrustedWeightsError`, exit 2 in every command) naming the config key, the file and the tensor.

- code: a `config.json` / `tokenizer_config.json` / processor config with `auto_map` (it asks
  transformers to import Python shipped with the checkpoint: `trust_remote_code`) is refused;
  mmln never runs a checkpoint's code and never asks anyone to allow it.
- pickles: `.bin` / `.pt` / `.ckpt` files are read with `weights_only=True` only
  (`mmln.model.checkpoint.torch_load`); a payload that would run code is refused.
- safetensors headers are parsed here, bounded, before safetensors or transformers map the file: a
  header longer than the file, not JSON, with an unknown dtype, a negative or huge shape, or offsets
  that do not match the shape or lie past the end of the file is "damaged", naming the tensor.
- dtypes: integer, bool or complex tensors where a model holds floats (an 8-bit quantized or a
  mislabelled checkpoint would be cast and answer garbage) are refused; index buffers
  (`position_ids`, ...) may be integers.
- values: NaN / Inf in any floating tensor of a built model or a checkpoint is refused
  (`check_finite`), naming the tensor and where it came from.
- mmln's own outputs: a weights path inside an mmln export is verified against the export's
  manifest (`mmln.base.outputs.verify`); a folder laid out as mmln's `llava` export but without a
  manifest is refused. Third-party llava-hf / LLaVA / CLIP / LLM directories carry no manifest and
  load as they are.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Iterable, Mapping

from mmln.model.errors import CheckpointError

FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E4M3FNUZ", "F8_E5M2", "F8_E5M2FNUZ"}
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
            "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1, "C64": 8, "U64": 8, "U32": 4, "U16": 2}
INDEX_BUFFERS = ("position_ids", "num_batches_tracked", "token_type_ids")
CODE_CONFIGS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json",
                "adapter_config.json", "generation_config.json")
MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


class UntrustedWeightsError(CheckpointError):
    """Weights or configs mmln will not load: code to run, a damaged file, integer or non-finite weights."""


def _refuse(key: str, file: Path | str, why: str) -> UntrustedWeightsError:
    return UntrustedWeightsError(f"{key}: {file}: {why}")


def check_no_code(folder: str | Path, key: str) -> None:
    """Refuse a checkpoint folder whose configs ask to import code shipped with it (`auto_map`)."""
    for name in CODE_CONFIGS:
        f = Path(folder) / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise _refuse(key, f, f"not valid JSON ({str(e)[:80]})") from None
        found = _auto_map(data)
        if found:
            raise _refuse(key, f, f"asks to run Python code shipped with the checkpoint ({found}: "
                          f"trust_remote_code); mmln never runs a checkpoint's code: use a checkpoint of an "
                          "architecture transformers itself defines")


def _auto_map(data, where: str = "") -> str:
    if isinstance(data, dict):
        for k, v in data.items():
            if k == "auto_map" and v:
                return f"{where}auto_map"
            if isinstance(v, dict) and (found := _auto_map(v, f"{where}{k}.")):
                return found
    return ""


def safetensors_header(file: str | Path, key: str) -> dict:
    """The tensors a .safetensors file declares ({name: {dtype, shape, data_offsets}}), validated."""
    file = Path(file)
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _refuse(key, file, f"damaged safetensors file ({size} bytes, no header)")
        n = struct.unpack("<Q", head)[0]
        if n > min(size - 8, MAX_HEADER):
            raise _refuse(key, file, f"damaged safetensors header (it claims {n} bytes, the file has {size})")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _refuse(key, file, "damaged safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise _refuse(key, file, "damaged safetensors header (not a JSON object)")
    data_len = size - 8 - n
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, info in tensors.items():
        _check_entry(file, key, name, info, data_len)
    return tensors


def _check_entry(file: Path, key: str, name: str, info, data_len: int) -> None:
    where = f"tensor '{name}'"
    if not isinstance(info, dict) or info.get("dtype") not in ITEMSIZE:
        raise _refuse(key, file, f"damaged safetensors header: {where} has no known dtype ({str(info)[:80]})")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise _refuse(key, file, f"damaged safetensors header: {where} has shape {str(shape)[:80]}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise _refuse(key, file, f"damaged safetensors header: {where} has offsets {str(offsets)[:80]}")
    nbytes = math.prod(shape) * ITEMSIZE[info["dtype"]]
    begin, end = offsets
    if not 0 <= begin <= end <= data_len or end - begin != nbytes:
        raise _refuse(key, file, f"damaged safetensors header: {where} of shape {shape} ({nbytes} bytes) does not "
                      f"fit its offsets {offsets} in {data_len} bytes of data (truncated, or a lying header)")


def check_dtypes(dtypes: Mapping[str, str], file: str | Path, key: str) -> None:
    """Refuse integer / bool / complex tensors (safetensors dtype names) other than index buffers."""
    for name, dtype in dtypes.items():
        if dtype not in FLOAT_DTYPES and not name.endswith(INDEX_BUFFERS):
            raise _refuse(key, file, f"tensor '{name}' is {dtype}, where the model holds floating-point weights "
                          "(a quantized or mislabelled checkpoint would answer garbage): give float16, bfloat16 "
                          "or float32 weights")


def torch_dtype_name(t) -> str:
    import torch

    if t.is_floating_point():
        return "F32"
    return "BOOL" if t.dtype == torch.bool else ("C64" if t.is_complex() else str(t.dtype).replace("torch.", ""))


def check_weight_file(file: str | Path, key: str) -> None:
    """Header, dtypes and (for torch files) the weights-only unpickling of one weights file."""
    file = Path(file)
    if file.suffix == ".safetensors":
        header = safetensors_header(file, key)
        check_dtypes({k: v["dtype"] for k, v in header.items()}, file, key)
        return
    if file.suffix in (".bin", ".pt", ".pth", ".ckpt"):
        from mmln.model.checkpoint import torch_load

        state = torch_load(file, key)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if isinstance(state, dict):
            check_loaded(state, key, file)


def check_checkpoint_file(path: str | Path, key: str) -> None:
    """A safetensors checkpoint's header and dtypes, before it is read (torch files: after, `check_loaded`)."""
    if Path(path).suffix == ".safetensors" and Path(path).is_file():
        header = safetensors_header(path, key)
        check_dtypes({k: v["dtype"] for k, v in header.items()}, path, key)


def check_loaded(state: Mapping, key: str, source: str | Path) -> None:
    """A loaded state dict: floating-point tensors (index buffers excepted), all finite."""
    check_dtypes({k: torch_dtype_name(v) for k, v in state.items() if hasattr(v, "is_floating_point")}, source, key)
    check_finite(state, key, source)


def check_source(path: str | Path | None, key: str) -> None:
    """Everything above for one configured weights path (a folder or a file), before it is loaded."""
    if not path:
        return
    p = Path(path)
    if not p.exists():
        return  # the loaders say what is missing
    from mmln.base.outputs import claimed_root, verify

    root = claimed_root(p)
    if root is not None:
        verify(root, what="an mmln export")
    if p.is_dir():
        check_no_code(p, key)
        for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
            check_weight_file(f, key)
    else:
        check_weight_file(p, key)


def check_finite(state: Mapping | Iterable, key: str, source: str | Path) -> None:
    """Refuse NaN / Inf in any floating tensor of `state` (a state dict or (name, tensor) pairs)."""
    import torch

    items = state.items() if isinstance(state, Mapping) else state
    for name, t in items:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type != "meta" \
                and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise _refuse(key, source, f"tensor '{name}' holds {bad} NaN/Inf values; mmln refuses non-finite "
                          "weights (a diverged or damaged checkpoint)")
