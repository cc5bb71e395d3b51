"""Where each setting of a resolved config came from (``--print-config``): the config's leaves
as dotted keys, and the layers that built it, later layers winning.
"""

from __future__ import annotations

import json
from typing import Any

from graftkit.config.build import build_config
from graftkit.config.schema import RunConfig

#: what a setting no layer names comes from: the field's default in this module
DEFAULT_SOURCE = "default"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of a config tree as ``{dotted.key: value}``; the phases are entered by number as
    ``--set`` addresses them (``phases.p1.lr``), another list of mappings with ``[i]``, any other
    list is one value."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        out = {}
        stem = prefix.rstrip(".")
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{stem}.p{i + 1}." if stem == "phases" else f"{stem}[{i}]."))
        return out
    return {prefix.rstrip("."): tree}


def build_config_with_sources(
    dataset: str, base: dict[str, Any], base_source: str, layers: list[tuple[str, dict[str, Any]]]
) -> tuple[RunConfig, dict[str, str]]:
    """:func:`build_config` over named layers, later layers winning, and where each setting of
    the result came from: ``{dotted.key: source}`` for every leaf (:func:`flatten`) of the
    resolved config. ``base`` is a YAML tree; each layer maps dotted keys to values (a mapping
    value replaces that whole section). A leaf no layer names has :data:`DEFAULT_SOURCE`.
    """
    overrides: dict[str, Any] = {}
    sources = dict.fromkeys(flatten(base), base_source)
    for source, values in layers:
        for key, value in values.items():
            overrides.pop(key, None)
            overrides[key] = value
            for old in [k for k in sources if k == key or k.startswith((f"{key}.", f"{key}["))]:
                del sources[old]
            for leaf in flatten(value, f"{key}.") if isinstance(value, dict) else [key]:
                sources[leaf] = source
    cfg = build_config(dataset, base, overrides, sources)
    resolved = flatten(json.loads(cfg.model_dump_json()))
    return cfg, {key: sources.get(key, DEFAULT_SOURCE) for key in resolved}


def format_config(cfg: RunConfig, sources: dict[str, str]) -> str:
    """Every setting of ``cfg`` once, as ``key: value  # source``, in the config's own order."""
    rows = [
        (key, json.dumps(value, default=str), sources.get(key, DEFAULT_SOURCE))
        for key, value in flatten(json.loads(cfg.model_dump_json())).items()
    ]
    width = min(max(len(k) + len(v) for k, v, _ in rows) + 2, 64)
    return "\n".join(f"{f'{k}: {v}':<{width}}  # {s}" for k, v, s in rows)
