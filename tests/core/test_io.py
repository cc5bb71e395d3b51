"""graftkit.io: a file or folder is complete or absent, never half-written."""

from __future__ import annotations

import pytest

from graftkit.io import (
    atomic_dir,
    atomic_file,
    atomic_write_text,
    remove_stale_temporaries,
    temporary_sibling,
)


def test_atomic_write_replaces_the_whole_file(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    atomic_write_text(target, '{"a": 1}')
    atomic_write_text(target, '{"b": 2}', fsync=True)
    assert target.read_text() == '{"b": 2}'
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "weights.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pt"]


def test_atomic_dir_appears_complete_or_not_at_all(tmp_path):
    target = tmp_path / "cohort"
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "a.npy").write_text("1")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    target.mkdir()  # an empty folder is replaced
    with atomic_dir(target) as tmp:
        (tmp / "a.npy").write_text("1")
        assert not (target / "a.npy").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cohort"]
    assert (target / "a.npy").read_text() == "1"


def test_atomic_dir_keeps_a_concurrent_writers_folder(tmp_path):
    target = tmp_path / "prior"
    with atomic_dir(target) as tmp:
        (tmp / "mine").write_text("mine")
        target.mkdir()  # another process renamed its complete folder into place meanwhile
        (target / "theirs").write_text("theirs")
    assert [p.name for p in target.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["prior"]


def test_stale_temporaries_of_one_target_are_removed(tmp_path):
    target = tmp_path / "prior-abc"
    stale_dir, stale_file = temporary_sibling(target), temporary_sibling(target)
    stale_dir.mkdir()
    (stale_dir / "x").write_text("x")
    stale_file.write_text("x")
    other = temporary_sibling(tmp_path / "prior-def")
    other.mkdir()
    assert sorted(remove_stale_temporaries(target)) == sorted([stale_dir, stale_file])
    assert [p.name for p in tmp_path.iterdir()] == [other.name]
