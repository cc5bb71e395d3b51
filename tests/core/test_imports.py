"""The package's import graph has no cycle, counting deferred imports inside functions too (a
cycle hidden behind a function-level import is still one); and the code cites the design document
that ships with it, not issue numbers a reader of the repository cannot look up."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
PACKAGE = ROOT / "graftkit"


def _modules(package: Path) -> dict[str, Path]:
    out = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``module -> modules of the package it imports`` (anywhere but under ``TYPE_CHECKING``)."""
    modules = _modules(package)
    root = package.name
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
        stack = [ast.parse(path.read_text())]
        while stack:
            node = stack.pop()
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                stack.extend(node.orelse)
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                targets = [
                    f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source
                    for a in node.names
                ]
            for target in targets:
                if target.split(".")[0] == root:
                    found = _resolve(target, modules)
                    if found and found != module:
                        graph[module].add(found)
            stack.extend(ast.iter_child_nodes(node))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_checker_finds_a_cycle_through_a_deferred_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from pkg import a\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
    )
    graph = import_graph(pkg)
    assert graph["pkg.c"] == set()  # a type-only import is no dependency
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(pkg)) is None


def test_graftkit_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "graftkit.curriculum.engine" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_code_cites_the_shipped_design_document_and_no_issue_numbers():
    assert (ROOT / "docs" / "design.md").is_file()
    offenders = []
    for folder in ("graftkit", "plugins", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if "DESIGN.md" in text or re.search(r"\b[Ii]ssues? \d+\b|issue-\d+", text):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_every_section_the_code_cites_exists_in_the_design_document():
    headings = {
        line.lstrip("#").strip()
        for line in (ROOT / "docs" / "design.md").read_text().splitlines()
        if line.startswith("#")
    }
    cited = set()
    for folder in ("graftkit", "plugins", "examples", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".yaml") and path.name != "design.md":
                for section in re.findall(r'design\.md,? "([^"]+)"', path.read_text()):
                    cited.add(" ".join(section.split()))  # a citation may wrap a line
    assert cited, "no citation found: the pattern is stale"
    assert sorted(cited - headings) == []
