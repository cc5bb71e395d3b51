"""A misspelt key in a ``--config`` file: one line naming the file, the key and the closest valid
keys, with the same suggestions as the same key given to ``--set``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from graftkit.cli import main
from graftkit.config import ConfigError, build_config, default_config_path, unknown_key_hint


def error_line(capsys, *argv: str) -> str:
    code = main(["run", "ct_rate", *argv, "--print-config"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and captured.out == "", captured
    return lines[0]


def config_file(tmp_path: Path, change) -> Path:
    tree = yaml.safe_load(default_config_path().read_text())
    change(tree)
    path = tmp_path / "my run.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("key", "closest"),
    [
        ("bridge.num_zone", "bridge.num_zones"),
        ("phases.p3.lrr", "phases.p3.lr"),
        ("seeed", "seed"),
        ("eval.generation.top_pp", "eval.generation.top_p"),
    ],
)
def test_unknown_key_in_config_file_names_file_key_and_closest(capsys, tmp_path, key, closest):
    def change(tree):
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node[int(part[1:]) - 1] if isinstance(node, list) else node[part]
        node[leaf] = 1

    path = config_file(tmp_path, change)
    line = error_line(capsys, "--config", str(path))
    hint = line.split("did you mean ", 1)[1]
    assert line.startswith(f"graftkit run: error: --config {path}: unknown config key {key}; ")
    assert hint.split(", ")[0].rstrip("?") == closest
    assert hint == error_line(capsys, "--set", f"{key}=1").split("did you mean ", 1)[1]


def test_every_unknown_key_of_a_file_is_on_the_one_line(capsys, tmp_path):
    def change(tree):
        tree["seeed"] = 1
        tree["bridge"]["num_zone"] = 4

    line = error_line(capsys, "--config", str(config_file(tmp_path, change)))
    assert "unknown config key bridge.num_zone; did you mean bridge.num_zones" in line
    assert "unknown config key seeed; did you mean seed?" in line


def test_unknown_key_without_a_source_still_gets_the_hint():
    with pytest.raises(ConfigError) as err:
        build_config(
            "ct_rate", base={**yaml.safe_load(default_config_path().read_text()), "sed": 3}
        )
    assert str(err.value) == "unknown config key sed; did you mean seed?"
    assert unknown_key_hint("xqxqxqxq").startswith("keys here: dataset, profile, seed")


def test_a_partial_config_file_names_the_missing_key_and_the_way_out(capsys, tmp_path):
    """A ``--config`` file replaces paper.yaml: one holding only a few settings is refused with
    the missing key and the two ways to do what was meant, not a dump of the file's tree."""
    path = tmp_path / "few.yaml"
    path.write_text("bridge:\n  num_zones: 4\n")
    line = error_line(capsys, "--config", str(path))
    assert line.startswith("graftkit run: error: missing config key phases")
    assert f"--config {path} replaces paper.yaml" in line and "--set" in line
    assert "num_zones': 4" not in line
