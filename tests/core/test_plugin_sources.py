"""`graftkit plugins` names each plugin's distribution and folder, and two installed
distributions declaring one entry-point name are warned about, never one dropped silently.

The two distributions are real ``*.dist-info`` folders on ``PYTHONPATH``, found by
``importlib.metadata`` as pip-installed ones are; the first folder on the path wins, as Python's
own imports do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PLUGIN = """from graftkit.config import Profile
from graftkit.hookspecs import hookimpl


@hookimpl
def register_profiles(register):
    register("{profile}", Profile(name="{profile}", overrides={{"seed": 1}}))
"""


def _distribution(site: Path, name: str, version: str, module: str) -> None:
    """A distribution ``name`` whose entry point ``dup`` is package ``module``."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[graftkit]\ndup = {module}\n")
    package = site / module
    package.mkdir()
    (package / "__init__.py").write_text(PLUGIN.format(profile=f"{module}-profile"))


def _graftkit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    _distribution(tmp_path / "first", "dup-first", "1.0", "dup_first")
    _distribution(tmp_path / "second", "dup-second", "2.0", "dup_second")
    path = os.pathsep.join([str(tmp_path / "first"), str(tmp_path / "second")])
    env = {**os.environ, "PYTHONPATH": path + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("GRAFTKIT_LOAD_PLUGINS", None)
    return subprocess.run(
        [sys.executable, "-m", "graftkit", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_a_name_declared_twice_loads_the_first_and_warns_naming_both(tmp_path):
    out = _graftkit(tmp_path, "plugins", "--json")
    assert out.returncode == 0, out.stderr
    info = {row["name"]: row for row in json.loads(out.stdout)}
    dup = info["dup"]
    assert dup["distribution"] == "dup-first" and dup["version"] == "1.0"
    assert dup["location"] == str(tmp_path / "first" / "dup_first")
    assert dup["provides"] == {"profile": ["dup_first-profile"]}
    assert dup["shadows"] == [
        {"distribution": "dup-second", "version": "2.0", "value": "dup_second"}
    ]
    warnings = [line for line in out.stderr.splitlines() if "dup" in line]
    assert len(warnings) == 1
    for part in ("plugin name 'dup'", "loaded dup-first 1.0 from", "not loaded: dup-second 2.0"):
        assert part in warnings[0]
    # the installed plugins name their distributions and folders too
    assert info["ct_rate"]["distribution"] == "graftkit-ct-rate"
    assert Path(info["ct_rate"]["location"]).name == "graftkit_ct_rate"
    assert info["graftkit.builtin"]["distribution"] == "graftkit (built in)"
    assert all(row["shadows"] == [] for name, row in info.items() if name != "dup")


def test_the_table_shows_the_distribution_left_out(tmp_path):
    out = _graftkit(tmp_path, "plugins")
    assert out.returncode == 0, out.stderr
    assert "also declared by dup-second 2.0: not loaded" in out.stdout
    assert str(tmp_path / "first" / "dup_first") in out.stdout
