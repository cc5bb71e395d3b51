"""Configs written by older graftkit versions, read as today's: :func:`upgrade` is the one place
that knows the older forms (applied to every tree before it is validated).

Each form it reads, and what it becomes:

* ``phases`` as a mapping ``{p1: ..., p4: ...}`` (the fixed four-phase curriculum): the ordered
  list, with the callbacks the four-phase engine ran without their being declared (phase 1
  initialised the compressor, phase 3 took ``--warm-bridge``);
* phase fields that are named callbacks now (:data:`LEGACY_PHASE_FIELDS`, e.g.
  ``lora_freeze_epoch: 6`` -> ``callbacks: {freeze_lora: {after_epoch: 6}}``; ``None``, ``0`` or
  ``false`` removes the callback), also when a profile or ``--set`` names them on today's list;
* ``ewc_fisher: false`` (never read: the phase-4 penalty is L2-SP, Fisher = 1) is dropped, and
  ``ewc_fisher: true`` refused;
* ``bridge.jepa_dim`` (the JEPA head's width is the text space's, ``bridge.whitening_components``;
  runs never read the field) is dropped.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from graftkit.config.schema import ConfigError

#: Phase fields of the fixed four-phase configs, now named callbacks: ``old field -> (callback,
#: option)``.
LEGACY_PHASE_FIELDS = {
    "lora_freeze_epoch": ("freeze_lora", "after_epoch"),
    "recalibrate_every": ("recalibrate", "every"),
    "projector_lr_scale": ("lars_projector_lr", None),
    "ewc_lambda": ("ewc", "lambda"),
    "monitor_collapse": ("collapse_monitor", None),
}

#: Callbacks the fixed four phases ran without declaring them.
LEGACY_IMPLICIT_CALLBACKS = {1: {"init_compressor": {}}, 3: {"warm_bridge": {}}}

#: Dotted keys that runs never read and old configs still hold: dropped on load.
DROPPED_KEYS = ("bridge.jepa_dim",)


def upgrade(tree: dict[str, Any]) -> dict[str, Any]:
    """``tree`` (a config as YAML holds it, overrides applied) in today's form; a copy."""
    tree = copy.deepcopy(tree)
    for key in DROPPED_KEYS:
        section, _, leaf = key.rpartition(".")
        if isinstance(tree.get(section), dict):
            tree[section].pop(leaf, None)
    phases = tree.get("phases")
    if isinstance(phases, dict):
        phases = _from_mapping(phases)
    if isinstance(phases, list):
        tree["phases"] = [_phase(p) if isinstance(p, dict) else p for p in phases]
    return tree


def _from_mapping(data: dict[str, Any]) -> list[dict[str, Any]]:
    numbers = {}
    for key in data:
        m = re.fullmatch(r"p?(\d+)", str(key))
        if m is None:
            raise ConfigError(
                f"phases: a list of phases is expected (a mapping p1..pN is read as the older "
                f"fixed-phase form); got key {key!r}"
            )
        numbers[int(m.group(1))] = key
    if sorted(numbers) != list(range(1, len(numbers) + 1)):
        raise ConfigError(f"phases: the mapping must number its phases 1..N, got {list(data)}")
    out = []
    for n in sorted(numbers):
        phase = dict(data[numbers[n]])
        if any(f in phase for f in LEGACY_PHASE_FIELDS) or n in LEGACY_IMPLICIT_CALLBACKS:
            implicit = LEGACY_IMPLICIT_CALLBACKS.get(n, {}) if len(numbers) == 4 else {}
            phase["callbacks"] = {**implicit, **dict(phase.get("callbacks") or {})}
        out.append(phase)
    return out


def _phase(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    if "ewc_fisher" in data and data.pop("ewc_fisher"):
        raise ConfigError(
            "ewc_fisher is not supported: the phase-4 penalty is L2-SP (ewc_lambda · "
            "Σ(θ − θ_P3)², Fisher = 1); remove the setting"
        )
    callbacks = dict(data.get("callbacks") or {})
    for field, (name, _) in LEGACY_PHASE_FIELDS.items():
        if field in data:
            value = _legacy_callback(field, data.pop(field))
            if value is not None or name in callbacks:
                callbacks[name] = value
    if callbacks or "callbacks" in data:
        data["callbacks"] = callbacks
    return data


def _legacy_callback(field: str, value: Any) -> dict[str, Any] | None:
    """The callback options an old phase field's value stands for; ``None`` = no callback."""
    if value is None or value is False or (field == "ewc_lambda" and value == 0):
        return None
    if field == "projector_lr_scale":
        low, high = value
        return {"min": low, "max": high}
    if field == "monitor_collapse":
        return {}
    return {LEGACY_PHASE_FIELDS[field][1]: value}
