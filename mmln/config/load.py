"""Loading a run config: YAML presets with their `inherit:` chains, dotted overrides, validation.

A run config is one YAML file. It may list other YAML files under ``inherit:`` (paths relative to
the file itself); they are merged in order, then the file's own keys, then ``key=value`` overrides
from the command line. Every key is checked against the schema (`mmln.config.schema`): an unknown
key is an error that names the key and the closest valid ones.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from mmln.config.rules import RULES, missing_paths, problems, written_problem
from mmln.config.schema import ConfigError, RunConfig, valid_keys


def _unknown_key_error(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid_keys(), n=3, cutoff=0.5)
    leaf = key.rsplit(".", 1)[-1]
    close += [k for k in valid_keys() if k.endswith("." + leaf) and k not in close][:3]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key '{key}' in {where}.{hint}")


def _walk_items(node: Any, prefix: str = ""):
    """(dotted key, value) of every key of a nested mapping, parents first; not below a schema leaf."""
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}{k}"
            yield key, v
            if key not in RULES:
                yield from _walk_items(v, key + ".")


def _merge(base: DictConfig, other: Any, where: str) -> DictConfig:
    raw = OmegaConf.to_container(other) if isinstance(other, DictConfig) else other
    allowed = set(valid_keys())
    for key, value in _walk_items(raw):
        if key not in allowed:
            raise _unknown_key_error(key, where)
        if key not in RULES and not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} in {where} is not allowed: {key} is a group of keys "
                              f"(set {key}.<name>=..., e.g. {next(k for k in RULES if k.startswith(key + '.'))})")
        problem = written_problem(key, value)
        if problem:
            raise ConfigError(f"{problem} (in {where})")
    try:
        return OmegaConf.merge(base, other)
    except (ValidationError, ConfigKeyError, OmegaConfBaseException) as e:
        key = getattr(e, "full_key", None) or "?"
        why = str(getattr(e, "msg", None) or e).strip().splitlines()[0]  # OmegaConf appends full_key, types: cut
        rule = RULES.get(key)
        raise ConfigError(f"{key} in {where} is not allowed: {why}" +
                          (f"; allowed: {rule.allowed}" if rule else "")) from None


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Any, str]]:
    """The YAML at `path` and everything it inherits, as (mapping, where) in merge order."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path in seen:
        raise ConfigError(f"config inheritance cycle: {' -> '.join(map(str, seen + (path,)))}")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path)) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {what}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys, got {type(raw).__name__}")
    parents = raw.pop("inherit", []) or []
    out: list[tuple[Any, str]] = []
    for parent in [parents] if isinstance(parents, str) else parents:
        out += _read_yaml((path.parent / parent).resolve(), seen + (path,))
    return out + [(raw, str(path))]


def parse_overrides(overrides: list[str]) -> Any:
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override '{o}' is not of the form key=value (e.g. tune.strategy=lora)")
    return OmegaConf.from_dotlist(list(overrides))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                require: tuple[str, ...] = ()) -> DictConfig:
    """Schema defaults <- YAML (with its `inherit:` chain) <- `key=value` overrides, then validated:
    every key against `mmln.config.rules.RULES`, and the paths of the `require`d groups of
    `mmln.config.rules.PATHS` ("model", "data", "resume": what the calling command reads) must exist."""
    cfg = OmegaConf.structured(RunConfig)
    if path is not None:
        for raw, where in _read_yaml(Path(path).resolve()):
            cfg = _merge(cfg, raw, where)
    if overrides:
        cfg = _merge(cfg, parse_overrides(list(overrides)), "command-line overrides")
    if cfg.model.init_from:
        _apply_init_from(cfg)
    validate(cfg)
    if missing := list(missing_paths(flatten(cfg), require)):  # every missing path in the one line
        raise ConfigError("; ".join(missing))
    return cfg


def _apply_init_from(cfg: DictConfig) -> None:
    """The architecture fields a `model.init_from` checkpoint implies override the config's."""
    from mmln.config.checkpoint import model_fields
    from mmln.model.errors import MissingWeightsError

    try:
        fields_ = model_fields(cfg.model.init_from, cfg.model.vision.path)
    except MissingWeightsError as e:
        raise ConfigError(str(e)) from None
    if not cfg.model.llm.tokenizer:
        fields_["llm"]["tokenizer"] = cfg.model.init_from
    cfg.model = OmegaConf.merge(cfg.model, fields_)


def validate(cfg: DictConfig) -> None:
    """Every key against `mmln.config.rules.RULES`, then the relations between keys."""
    for problem in problems(flatten(cfg)):
        raise ConfigError(problem)
    from mmln.tuning import strategy_problem  # light: the registry imports no torch

    problem = strategy_problem(cfg.tune.strategy, cfg.stage)
    if problem:
        raise ConfigError(problem)
    t = cfg.train
    if t.connector_lr is not None:  # the alias: one value under both keys (both are logged as params)
        if t.group_lr.connector is not None and t.group_lr.connector != t.connector_lr:
            raise ConfigError(f"train.connector_lr={t.connector_lr} and train.group_lr.connector={t.group_lr.connector} "
                              "disagree: set one of them")
        t.group_lr.connector = t.connector_lr
    elif t.group_lr.connector is not None:
        t.connector_lr = t.group_lr.connector
    if t.epochs == -1 and t.max_steps == -1:
        raise ConfigError("train.epochs=-1 trains no step without train.max_steps >= 1")
    extra = set(cfg.tune.ia3.feedforward_modules) - set(cfg.tune.ia3.target_modules)
    if extra:
        raise ConfigError(f"tune.ia3.feedforward_modules={list(cfg.tune.ia3.feedforward_modules)} is not allowed: "
                          f"a subset of tune.ia3.target_modules ({sorted(extra)} are not in it)")
    if cfg.data.batching == "packed" and (cfg.model.loss_chunk <= 0 or cfg.model.attn_implementation != "sdpa"):
        raise ConfigError("data.batching=packed needs model.loss_chunk > 0 and model.attn_implementation=sdpa "
                          f"(got {cfg.model.loss_chunk}, {cfg.model.attn_implementation})")
    if cfg.model.vision.select_layer >= 0 or -cfg.model.vision.select_layer > cfg.model.vision.num_layers:
        raise ConfigError(
            f"model.vision.select_layer={cfg.model.vision.select_layer} must be negative and within "
            f"the {cfg.model.vision.num_layers} vision layers (-2 = second-to-last, as LLaVA)"
        )


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """Dotted key -> leaf value, e.g. for MLflow params."""
    out: dict[str, Any] = {}

    def rec(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                rec(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    rec(OmegaConf.to_container(cfg, resolve=True), "")
    return out
