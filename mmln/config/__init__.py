"""The run configuration: typed schema, YAML presets with `inherit:`, dotted overrides, validation.

`schema` (the dataclasses and their defaults), `load` (presets, overrides, the checks between
keys), `rules` (what every key allows; paths that must exist), `checkpoint` (what a checkpoint's
config.json says, read as data: the config never imports a loader). The names below are the
public API: `from mmln.config import load_config, ConfigError, ...`.
"""
from mmln.config.load import flatten, load_config, parse_overrides, to_yaml, validate
from mmln.config.schema import (CONF_DIR, PAPER_LRS, AnalysisConfig, ConfigError, ConnectorConfig, DataConfig,
                                DataSplitConfig, DebugConfig, EvalConfig, GroupLRConfig, IA3TuneConfig, LLMConfig,
                                LoraConfig, ModelConfig, RunConfig, TrackingConfig, TrainConfig, TuneConfig,
                                VeraTuneConfig, VisionConfig, valid_keys)

__all__ = ["CONF_DIR", "PAPER_LRS", "AnalysisConfig", "ConfigError", "ConnectorConfig", "DataConfig", "DataSplitConfig",
           "DebugConfig", "EvalConfig", "GroupLRConfig", "IA3TuneConfig", "LLMConfig", "LoraConfig", "ModelConfig",
           "RunConfig", "TrackingConfig", "TrainConfig", "TuneConfig", "VeraTuneConfig", "VisionConfig", "flatten",
           "load_config", "parse_overrides", "to_yaml", "valid_keys", "validate"]
