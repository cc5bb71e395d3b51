"""Resume policy: a killed run continues only with the settings its checkpoints were trained
with; :data:`RESUME_SAFE_KEYS` may change when named (``--allow-config-change``), and each change
is recorded in ``history.jsonl``."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from graftkit.config import ConfigError, RunConfig, flatten, load_yaml, validate
from graftkit.rundir import RunDir

#: Config keys ``--resume --allow-config-change`` may accept: they change how a run is evaluated
#: or loaded, not what its checkpoints hold (a trailing ``.`` is a whole section).
RESUME_SAFE_KEYS = ("eval.", "data.num_workers")


def check_resume_config(cfg: RunConfig, rundir: RunDir, allowed: list[str]) -> dict[str, list[Any]]:
    """Compare the resolved config with ``RUN/config.yaml``; refuse any difference not allowed.

    Returns the allowed changes (``key -> [old, new]``). ``output_dir`` is where the run is, not
    how it trains, and is not compared. A config of an older version compares in today's form.
    """
    if not rundir.config.is_file():
        return {}
    tree = load_yaml(rundir.config)
    with contextlib.suppress(ConfigError):
        tree = json.loads(validate(tree).model_dump_json())
    saved = flatten(tree)
    current = flatten(json.loads(cfg.model_dump_json()))
    changed = {
        key: [saved.get(key), current.get(key)]
        for key in sorted(set(saved) | set(current))
        if key != "output_dir" and saved.get(key) != current.get(key)
    }
    for pattern in allowed:
        if not any(pattern == k or pattern.startswith(k) for k in RESUME_SAFE_KEYS):
            safe = ", ".join(k + "*" if k.endswith(".") else k for k in RESUME_SAFE_KEYS)
            raise ConfigError(
                f"--allow-config-change {pattern}: only {safe} may change on --resume (the "
                "checkpoints were trained with the saved values); start a new run with "
                "--init-from to change it"
            )

    def ok(key: str) -> bool:
        return any(key == p or (p.endswith(".*") and key.startswith(p[:-1])) for p in allowed)

    refused = [k for k in changed if not ok(k)]
    if refused:
        shown = "; ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused[:8])
        more = f" (and {len(refused) - 8} more)" if len(refused) > 8 else ""
        raise ConfigError(
            f"--resume: the config differs from {rundir.config}: {shown}{more}; resume with the "
            "same settings (or --allow-config-change KEY for eval.* keys)"
        )
    return changed
