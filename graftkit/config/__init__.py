"""The run configuration: a typed schema (pydantic), built from YAML layers and dotted overrides.

Paper numbers live in ``graftkit/configs/*.yaml`` and in the schema's field defaults, never in
code paths. The package's parts:

* :mod:`~graftkit.config.schema`: the sections of a run (data, model, bridge, objective, the
  phases of the curriculum, eval, launch) and :class:`Profile`;
* :mod:`~graftkit.config.upgrade`: the one place that reads configs older graftkit versions
  wrote;
* :mod:`~graftkit.config.overrides`: dotted keys (``--set phases.p3.lr=1e-5``): values, setting,
  checking, the closest valid keys;
* :mod:`~graftkit.config.build`: tree + overrides -> validated :class:`RunConfig`, one line per
  invalid value;
* :mod:`~graftkit.config.provenance`: where each setting came from (``--print-config``);
* :mod:`~graftkit.config.layers`: a command's layers (paper.yaml, profile, ``--config``, flags,
  ``--set``), resolved with the plugins' profiles.
"""

from graftkit.config.build import build_config, load_yaml, validate
from graftkit.config.overrides import (
    check_key,
    config_keys,
    parse_overrides,
    parse_value,
    section_model,
    set_dotted,
    unknown_key_hint,
)
from graftkit.config.provenance import (
    DEFAULT_SOURCE,
    build_config_with_sources,
    flatten,
    format_config,
)
from graftkit.config.schema import (
    PARAMETER_GROUPS,
    BridgeConfig,
    BridgeSettings,
    ChatConfig,
    CompressorSettings,
    ConfigError,
    DataConfig,
    EarlyStoppingConfig,
    EvalConfig,
    GenerationConfig,
    LaunchConfig,
    LoraSettings,
    ModelConfig,
    ObjectiveConfig,
    PhaseConfig,
    PhasesConfig,
    PriorConfig,
    Profile,
    RunConfig,
    Strict,
    default_config_path,
)
from graftkit.config.upgrade import upgrade

__all__ = [
    "DEFAULT_SOURCE",
    "PARAMETER_GROUPS",
    "BridgeConfig",
    "BridgeSettings",
    "ChatConfig",
    "CompressorSettings",
    "ConfigError",
    "DataConfig",
    "EarlyStoppingConfig",
    "EvalConfig",
    "GenerationConfig",
    "LaunchConfig",
    "LoraSettings",
    "ModelConfig",
    "ObjectiveConfig",
    "PhaseConfig",
    "PhasesConfig",
    "PriorConfig",
    "Profile",
    "RunConfig",
    "Strict",
    "build_config",
    "build_config_with_sources",
    "check_key",
    "config_keys",
    "default_config_path",
    "flatten",
    "format_config",
    "load_yaml",
    "parse_overrides",
    "parse_value",
    "section_model",
    "set_dotted",
    "unknown_key_hint",
    "upgrade",
    "validate",
]
