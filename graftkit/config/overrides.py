"""Dotted keys: ``--set phases.p3.lr=1e-5`` and ``--config`` files address the run config by
them. Parsing a value, setting a key in a tree, checking a key against the schema and the
closest valid keys when it is unknown (the same hint for ``--set`` and ``--config``).
"""

from __future__ import annotations

import difflib
import re
import typing
from typing import Any

import yaml
from pydantic import BaseModel

from graftkit.config.schema import ConfigError, PhaseConfig, PhasesConfig, RunConfig


def parse_value(raw: str) -> Any:
    """A ``--set`` or ``--option`` value: YAML scalar/list syntax (``1e-5``, ``[7,14]``, ``true``,
    ``null``); a number YAML 1.1 reads as a string (``1e-5``) is a number."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-5" as a string
        except ValueError:
            return value
    return value


def _list_index(node: list, part: str, key: str) -> int:
    """``p3`` or ``3`` -> index 2 of a list section (the phases); refuse anything else."""
    m = re.fullmatch(r"p?(\d+)", part)
    if m is None or not 1 <= int(m.group(1)) <= len(node):
        raise ConfigError(f"--set {key}: {part!r} is not one of p1..p{len(node)}")
    return int(m.group(1)) - 1


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, key)]
            continue
        if not isinstance(node.get(part), dict | list):
            if part in node and node[part] is not None:
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
            node[part] = {}
        node = node[part]
    if isinstance(node, list):
        node[_list_index(node, parts[-1], key)] = value
    else:
        node[parts[-1]] = value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["phases.p3.lr=1e-5", ...]`` -> ``{"phases.p3.lr": 1e-5}`` (phase 3's ``lr``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        key, raw = pair.split("=", 1)
        out[key.strip()] = parse_value(raw.strip())
    return out


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field annotation (``X``, ``X | None``), else ``None``."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def config_keys(
    model: type[BaseModel] = RunConfig, prefix: str = "", phase: str = "p1"
) -> list[str]:
    """Every dotted key of ``model``, sections included; the phases' as ``phases.{phase}.*``."""
    if issubclass(model, PhasesConfig):  # a list addressed by phase number: phases.p3.lr
        return config_keys(PhaseConfig, f"{prefix}{phase}.", phase)
    keys = []
    for name, info in model.model_fields.items():
        keys.append(prefix + name)
        sub = section_model(info.annotation)
        if sub is not None:
            keys += config_keys(sub, f"{prefix}{name}.", phase)
    return keys


def unknown_key_hint(key: str, at: int = -1) -> str:
    """``did you mean A, B, C?`` for a dotted key no config section has (its part ``at`` is the
    unknown one): the valid keys closest to it as a whole, then those of that part's section
    closest to the part; with none close, ``keys here: ...`` (the section's keys). ``--set`` and
    ``--config`` give this same hint."""
    parts = key.split(".")
    at = at % len(parts)
    phase = next((p for p in parts if re.fullmatch(r"p\d+", p)), "p1")
    keys = config_keys(phase=phase)
    parent = ".".join(parts[:at])
    here = [k for k in keys if k.rpartition(".")[0] == parent]
    names = [k.rpartition(".")[2] for k in here]
    near = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    close = difflib.get_close_matches(parts[at], names)
    near += [k for k in here if k not in near and k.rpartition(".")[2] in close]
    return f"did you mean {', '.join(near[:3])}?" if near else f"keys here: {', '.join(here[:20])}"


def check_key(key: str) -> None:
    """Refuse a ``--set`` key no config section has, suggesting the nearest valid keys."""
    model: type[BaseModel] | None = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if model is None:
            return  # inside a free-form mapping (e.g. data.synth): the dataset checks it
        if issubclass(model, PhasesConfig):
            if not re.fullmatch(r"p?\d+", part):
                raise ConfigError(f"--set {key}: phases are addressed by number, e.g. phases.p3.lr")
            model = PhaseConfig
            continue
        fields = model.model_fields
        if part not in fields:
            raise ConfigError(f"--set {key}: unknown config key; {unknown_key_hint(key, at=i)}")
        model = section_model(fields[part].annotation)
        if model is None and i < len(parts) - 1 and "dict" not in str(fields[part].annotation):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
