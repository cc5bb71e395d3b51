"""docs/tutorial-new-modality.md cannot rot: its listings build the plugin, its commands run.

The tutorial is replayed as a reader would follow it, in a fresh folder: each file listing
(```` ```python title="PATH" ````; a second listing of the same PATH continues that file after
two blank lines) is written where the reader's shell is, and each ```` ```bash ```` block runs in
that shell's folder (``cd`` carries over). Two substitutions keep the replay cheap and the
environment intact, and are the only ones:

- ``pip install -e .`` installs ``examples/plugin_digits`` instead of the temporary folder
  (``pip install --no-deps -e``, skipped when that folder is already installed), after checking
  that the listings rebuilt exactly that plugin: an editable install of a temporary folder would
  leave the environment pointing at a deleted path;
- ``graftkit run digits`` without ``--profile`` gets ``--profile digits-smoke``.

A ```` ```console ```` block whose lines start with ``$ `` shows a command and what it prints:
each is run after the replay, in the reader's folder, and must print those lines.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "tutorial-new-modality.md"
PLUGIN = ROOT / "examples" / "plugin_digits"
FENCE = re.compile(r'^```(\w+)(?: title="([^"]+)")?\n(.*?)^```$', re.S | re.M)
NOT_LISTED = {"README.md"}  # the plugin's README holds measured results, not code


def tutorial_steps() -> list[tuple[str, str, str]]:
    """``(kind, path, body)`` in document order; kind is ``file`` or ``bash``."""
    steps = []
    for lang, title, body in FENCE.findall(TUTORIAL.read_text()):
        if title:
            steps.append(("file", title, body))
        elif lang == "bash":
            steps.append(("bash", "", body))
    return steps


def expected_figures(profile: str) -> dict[str, str]:
    """The tutorial's table of what the results script prints: ``{row: value}`` for ``profile``."""
    lines = TUTORIAL.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| printed |"))
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    column = next(i for i, cell in enumerate(table[0]) if cell.startswith(f"`{profile}`"))
    return {row[0]: row[column] for row in table[2:]}


def console_examples() -> list[tuple[str, list[str]]]:
    """``(command, lines it prints)`` of each ```` ```console ```` block written as a session."""
    examples = []
    for lang, _, body in FENCE.findall(TUTORIAL.read_text()):
        if lang != "console" or not body.startswith("$ "):
            continue
        for chunk in body.split("$ ")[1:]:
            command, *printed = chunk.rstrip("\n").split("\n")
            examples.append((command, printed))
    return examples


def plugin_files(folder: Path) -> dict[str, str]:
    skip = ("__pycache__", ".egg-info", "build", "runs")
    return {
        str(p.relative_to(folder)): p.read_text()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and not any(part.endswith(skip) for part in p.relative_to(folder).parts)
        and p.name not in NOT_LISTED
    }


def test_listings_rebuild_the_example_plugin(tmp_path):
    written: dict[str, list[str]] = {}
    for kind, path, body in tutorial_steps():
        if kind == "file":
            written.setdefault(path, []).append(body)
    for path, pieces in written.items():
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n\n\n".join(p.rstrip("\n") for p in pieces) + "\n")
    assert plugin_files(tmp_path) == plugin_files(PLUGIN)


def _installed_from_plugin() -> bool:
    try:
        dist = importlib.metadata.distribution("graftkit-digits")
    except importlib.metadata.PackageNotFoundError:
        return False
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    return direct.get("url") == PLUGIN.as_uri() and direct.get("dir_info", {}).get("editable")


def _install_example(block: str, env: dict[str, str]) -> None:
    assert block.strip() == "pip install -e .", f"unexpected install block: {block!r}"
    if not _installed_from_plugin():
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "-e", str(PLUGIN)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def _smoke_sized(block: str) -> str:
    return re.sub(
        r"graftkit run digits(?![^\n]*--profile)",
        "graftkit run digits --profile digits-smoke",
        block,
    )


def test_every_command_of_the_tutorial_runs(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRAFTKIT_CACHE": str(tmp_path / "cache")}
    env.pop("GRAFTKIT_LOAD_PLUGINS", None)
    session = tmp_path / "session"
    session.mkdir()
    cwd = session
    written: set[str] = set()
    outputs = []
    timings = []
    for kind, path, body in tutorial_steps():
        if kind == "file":
            target = cwd / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if path in written:
                body = target.read_text().rstrip("\n") + "\n\n\n" + body
            target.write_text(body)
            written.add(path)
            continue
        if "pip install" in body:
            assert plugin_files(cwd) == plugin_files(PLUGIN)
            _install_example(body, env)
            continue
        start = time.monotonic()
        script = f"set -euo pipefail\n{_smoke_sized(body)}\npwd > {tmp_path / 'cwd'}\n"
        out = subprocess.run(
            ["bash", "-c", script], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
        )
        assert out.returncode == 0, f"$ {body}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        cwd = Path((tmp_path / "cwd").read_text().strip())
        outputs.append((body, out.stdout))
        timings.append((round(time.monotonic() - start, 1), body.strip().splitlines()[-1]))

    print("seconds per block:", timings)
    by_command = {body.strip().splitlines()[0]: stdout for body, stdout in outputs}
    # graftkit plugins lists what the entry point registered
    listing = by_command["graftkit plugins"]
    for name in ("digits-rows", "digits-rules", "digits-tiny", "digits-smoke"):
        assert name in listing
    # graftkit label: row a = both loops, b = the bar only, c = nothing
    rows = [line.split(",") for line in (cwd / "labels.csv").read_text().strip().splitlines()]
    header, values = rows[0], {row[0]: row[1:] for row in rows[1:]}
    classes = header[1:]
    assert values["a"] == ["1" if c in ("Upper loop", "Lower loop") else "0" for c in classes]
    assert values["b"] == ["1" if c == "Horizontal bar" else "0" for c in classes]
    assert values["c"] == ["0"] * len(classes)
    # the run wrote the metrics the tutorial reads, and they are what it printed
    run = cwd / "runs" / "digits"
    metrics = json.loads((run / "metrics.json").read_text())
    printed = next(out for body, out in outputs if "metrics.json" in body)
    assert f"generation macro F1     {metrics['eval']['macro_f1']:.3f}" in printed
    # ... and near the figures the tutorial gives for digits-smoke (measured on another machine:
    # floating point may move a generated word, not the picture)
    expected = expected_figures("digits-smoke")
    assert abs(metrics["eval"]["macro_f1"] - float(expected["generation macro F1"])) < 0.1
    pooled = metrics["probe"]["slice_mean"]["macro_f1"]
    assert abs(pooled - float(expected["pooled probe, encoder"])) < 0.1
    everything = metrics["baselines"]["all_positive"]["macro_f1"]
    assert abs(everything - float(expected["all-positive report"])) < 1e-3  # labels alone
    assert abs(metrics["eval"]["crg"] - float(expected["CRG score"])) < 0.1
    assert expected["zeroing removes"] == "n/a"
    assert "zeroing removes         n/a of generation F1" in printed
    assert metrics["eval"]["extractor_on_reference"]["macro_f1"] == 1.0
    assert "profile: digits-smoke" in (run / "config.yaml").read_text()
    generated = next(out for body, out in outputs if "graftkit generate" in body)
    assert generated.strip(), "graftkit generate printed no report"
    # the sessions shown, e.g. a misspelt option: one line, exit code 2
    assert console_examples()
    for command, printed in console_examples():
        out = subprocess.run(
            ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
        )
        shown = (out.stdout + out.stderr).splitlines()
        assert all(line in shown for line in printed), f"$ {command}\n{out.stdout}\n{out.stderr}"
        if any("error:" in line for line in printed):
            assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
