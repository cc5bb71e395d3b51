"""``graftkit run DATASET --print-config``: every setting once, with where it came from."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from graftkit.cli import main
from graftkit.config import default_config_path, flatten, validate


def printed(capsys, *argv: str) -> dict[str, tuple[object, str]]:
    assert main(["run", *argv, "--print-config"]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        match = re.fullmatch(r"(\S+): (.*?)\s+# (.+)", line)
        assert match, line
        key, value, source = match.groups()
        assert key not in rows, f"{key} printed twice"
        rows[key] = (json.loads(value), source)
    return rows


def test_each_setting_once_with_its_source(capsys, tmp_path):
    rows = printed(
        capsys, "ct_rate", "--profile", "smoke", "--set", "bridge.num_zones=8",
        "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert rows["bridge.num_zones"] == (8, "--set")
    assert rows["data.data_dir"] == (str(tmp_path), "--data-dir")
    assert rows["output_dir"] == (str(tmp_path / "run"), "--output-dir")
    assert rows["profile"] == ("smoke", "--profile")
    assert rows["dataset"] == ("ct_rate", "argument")
    assert rows["eval.probe_folds"] == (2, "profile smoke")  # the smoke profile sets it
    assert rows["phases.p1.losses.bce"] == (1.5, "paper.yaml")  # paper.yaml sets it
    assert rows["bridge.predictor_dropout"] == (0.1, "default")  # no layer names it
    assert not (tmp_path / "run").exists(), "--print-config runs nothing"
    paper = flatten(yaml.safe_load(default_config_path().read_text()))
    for key, (_, source) in rows.items():
        if source == "paper.yaml":
            assert key in paper


def test_the_printed_values_are_the_resolved_config(capsys):
    """The listing is the run's config itself: read back, it validates to the same config."""
    rows = printed(capsys, "ct_rate", "--profile", "paper")
    tree: dict = {}
    for key, (value, _) in rows.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    cfg = validate(tree)  # the phases come back as the p1..pN mapping, read as a curriculum
    assert cfg.profile == "paper" and cfg.bridge.num_zones == 32
    assert all(source != "--set" for _, source in rows.values())


def test_config_file_is_named_as_the_source(capsys, tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text(default_config_path().read_text())
    rows = printed(capsys, "ct_rate", "--config", str(path))
    assert rows["phases.p3.lr"][1] == f"--config {path}"
    assert rows["profile"] == (None, "default")


@pytest.mark.parametrize("verb", ["plan", "study"])
def test_plan_and_study_print_the_same_listing(capsys, verb):
    assert main([verb, "ct_rate", "--profile", "tiny", "--print-config"]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"^bridge\.num_zones: 32\s+# paper\.yaml$", listing, re.M)
