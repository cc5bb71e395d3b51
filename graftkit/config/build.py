"""Build a validated :class:`RunConfig` from a YAML tree and dotted overrides: the tree is merged,
upgraded from older forms (:func:`graftkit.config.upgrade.upgrade`) and validated; an invalid
value is one line per error naming the key, the value and what is allowed, and where it was set.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from graftkit.config.overrides import set_dotted, unknown_key_hint
from graftkit.config.schema import ConfigError, RunConfig, default_config_path
from graftkit.config.upgrade import upgrade


def _source_of(key: str, sources: dict[str, str]) -> str | None:
    """Where ``key`` (a leaf, or a section holding leaves) was set, from ``{leaf: source}``."""
    if key in sources:
        return sources[key]
    return next((s for k, s in sources.items() if k.startswith(f"{key}.")), None)


def _format_validation_error(err: ValidationError, sources: dict[str, str] | None = None) -> str:
    """One line per error. An unknown key names where it was set (``--config FILE``, a
    profile) when ``sources`` knows, and the valid keys closest to it."""
    lines = []
    for e in err.errors():
        loc = list(e["loc"])
        if loc[:1] == ["phases"] and len(loc) > 1 and isinstance(loc[1], int):
            loc[1] = f"p{loc[1] + 1}"  # phases are addressed by number, as in --set
        field = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            where = _source_of(field, sources or {})
            lines.append(
                f"{where + ': ' if where else ''}unknown config key {field}; "
                + unknown_key_hint(field)
            )
            continue
        if e["type"] == "missing":
            files = sorted({s for s in (sources or {}).values() if s.startswith("--config")})
            lines.append(
                f"missing config key {field}"
                + (
                    f" ({files[0]} replaces paper.yaml, so it must be a whole run config such "
                    "as a run's config.yaml; change a few settings with --set instead)"
                    if files
                    else ""
                )
            )
            continue
        value = repr(e.get("input"))
        value = value if len(value) <= 80 else value[:77] + "..."
        lines.append(f"invalid config field {field} = {value}: {e['msg']}")
    return "\n".join(lines)


def build_config(
    dataset: str,
    base: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    sources: dict[str, str] | None = None,
) -> RunConfig:
    """Merge ``base`` (a YAML tree), then dotted ``overrides``; validate with clear errors.
    ``sources`` (``{dotted.leaf: where it was set}``) lets an error name the file of a key."""
    tree = copy.deepcopy(base or yaml.safe_load(default_config_path().read_text()))
    tree.setdefault("dataset", dataset)
    tree["dataset"] = dataset
    for key, value in (overrides or {}).items():
        set_dotted(tree, key, value)
    return validate(tree, sources)


def validate(tree: dict[str, Any], sources: dict[str, str] | None = None) -> RunConfig:
    """``tree`` (a whole run config, in any form graftkit ever wrote) as a :class:`RunConfig`."""
    try:
        return RunConfig.model_validate(upgrade(tree))
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, sources)) from None


def load_yaml(path: Path) -> dict[str, Any]:
    """A config file's tree; one line naming the file when it cannot be read or is no mapping."""
    try:
        tree = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config {path} must hold a mapping at the top level")
    return tree
