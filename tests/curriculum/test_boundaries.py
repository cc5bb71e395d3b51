"""Training and evaluation stay apart: ``graftkit.eval`` imports nothing of
``graftkit.curriculum``, and the curriculum reaches evaluation only through its monitor callback."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "graftkit"


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def _importing(folder: str, prefix: str) -> list[str]:
    return sorted(
        p.name
        for p in (PACKAGE / folder).glob("*.py")
        if any(m == prefix or m.startswith(prefix + ".") for m in _imports(p))
    )


def test_eval_imports_nothing_of_the_curriculum():
    assert _importing("eval", "graftkit.curriculum") == []


def test_the_curriculum_reaches_eval_only_through_its_monitor_callback():
    assert _importing("curriculum", "graftkit.eval") == ["monitor.py"]


@pytest.mark.parametrize("field", ["_collapse_monitor", "_extractor_cache"])
def test_no_attribute_is_bolted_onto_a_run(field):
    for path in PACKAGE.rglob("*.py"):
        assert field not in path.read_text(), path
