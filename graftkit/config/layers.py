"""A command's run config from its layers, later layers winning: paper.yaml (or a ``--config``
file, which replaces it) -> the profile's overrides (``--profile``, else the dataset's default
profile) -> command-line flags (``--data-dir``, ``--llm``) -> ``--set`` pairs.

Profiles come from the plugins (``register_profiles``), so this module reads the plugin registry;
the rest of the package does not. A profile made for one dataset (``Profile.dataset``) is refused
for another, naming the profiles that fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graftkit.config.build import load_yaml
from graftkit.config.overrides import check_key, parse_overrides
from graftkit.config.provenance import build_config_with_sources
from graftkit.config.schema import ConfigError, Profile, RunConfig, default_config_path

#: A layer of settings: ``(where it comes from, {dotted key: value})``.
Layer = tuple[str, dict[str, Any]]


def resolve_config(
    dataset: str,
    *,
    profile: str | None = None,
    config: Path | None = None,
    overrides: Sequence[str] = (),
    flags: Sequence[Layer] = (),
) -> tuple[RunConfig, dict[str, str]]:
    """The run config of ``dataset`` and where each setting came from (``--print-config``).

    ``overrides`` are ``--set KEY=VALUE`` pairs, each key checked against the schema first;
    ``flags`` are the layers of command-line flags.
    """
    from graftkit import plugins

    dataset_cls = plugins.get("dataset", dataset)
    if config:
        base, base_source = load_yaml(config), f"--config {config}"
    else:
        base, base_source = load_yaml(default_config_path()), default_config_path().name
    layers: list[Layer] = [("argument", {"dataset": dataset})]
    profile_name = profile or (None if config else dataset_cls.default_profile)
    preset = plugins.get("profile", profile_name) if profile_name else None
    if preset is not None:
        check_profile_dataset(preset, dataset)
    if preset is not None and not config:
        values = dict(preset.overrides)
        if preset.launch is not None:
            values["launch"] = preset.launch.model_dump()
        layers.append((f"profile {profile_name}", values))
    if profile_name:
        how = "--profile" if profile else f"dataset {dataset}'s default profile"
        layers.append((how, {"profile": profile_name}))
    layers += flags
    user = parse_overrides(list(overrides))
    for key in user:
        check_key(key)
    layers.append(("--set", user))
    return build_config_with_sources(dataset, base, base_source, layers)


def check_profile_dataset(preset: Profile, dataset: str) -> None:
    """Refuse a profile made for another dataset (``Profile.dataset``; ``None`` fits any): its
    overrides name that dataset's options and sizes, so the run would fail later, less clearly.
    """
    from graftkit import plugins

    if preset.dataset is None or preset.dataset == dataset:
        return
    reg = plugins.registry("profile")
    fitting = sorted(n for n in reg.names() if reg.get(n).dataset in (None, dataset))
    raise ConfigError(
        f"--profile {preset.name}: made for dataset {preset.dataset!r}, not {dataset!r}; "
        f"profiles for {dataset}: {', '.join(fitting) or '(none registered)'}"
    )
