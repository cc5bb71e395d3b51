import json

import pytest
import torch

from graftkit.checkpoint import (
    CheckpointError,
    flatten_state,
    is_complete,
    load_checkpoint,
    save_checkpoint,
    unflatten_state,
)


def test_round_trip_with_optimizer_state(tmp_path):
    w = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([w], lr=0.1)
    w.sum().backward()
    opt.step()
    tensors = {}
    skeleton = flatten_state("opt", opt.state_dict(), tensors)
    save_checkpoint(
        tmp_path / "ck",
        {"model": {"w": w.detach()}, "optimizer": tensors},
        {"epoch": 3, "opt": skeleton},
    )
    groups, state = load_checkpoint(tmp_path / "ck")
    assert torch.equal(groups["model"]["w"], w.detach())
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3, 2))], lr=0.1)
    opt2.load_state_dict(unflatten_state(state["opt"], groups["optimizer"]))
    assert torch.equal(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    assert state["epoch"] == 3


def test_corrupted_and_partial_checkpoints_are_detected(tmp_path):
    save_checkpoint(tmp_path / "ck", {"model": {"w": torch.ones(4)}}, {"epoch": 0})
    path = tmp_path / "ck" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors fails its checksum"):
        load_checkpoint(tmp_path / "ck")
    save_checkpoint(tmp_path / "ck2", {"model": {"w": torch.ones(4)}}, {"epoch": 0})
    (tmp_path / "ck2" / "manifest.json").unlink()
    assert not is_complete(tmp_path / "ck2")
    with pytest.raises(CheckpointError, match="partial"):
        load_checkpoint(tmp_path / "ck2")


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    for epoch in range(3):
        save_checkpoint(
            tmp_path / "last", {"model": {"w": torch.full((2,), float(epoch))}}, {"epoch": epoch}
        )
    groups, state = load_checkpoint(tmp_path / "last")
    assert state["epoch"] == 2 and groups["model"]["w"].tolist() == [2.0, 2.0]
    assert [p.name for p in tmp_path.iterdir()] == ["last"]
    assert json.loads((tmp_path / "last" / "manifest.json").read_text())["files"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "last", {"model": {"w": torch.ones(2)}}, {"epoch": 0})

    def boom(_tmp):
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        save_checkpoint(
            tmp_path / "last", {"model": {"w": torch.zeros(2)}}, {"epoch": 1}, writer=boom
        )
    _, state = load_checkpoint(tmp_path / "last")
    assert state["epoch"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


@pytest.mark.parametrize("stage", ["between_renames", "before_renames"])
def test_an_overwrite_killed_midway_recovers_a_complete_checkpoint(tmp_path, monkeypatch, stage):
    """A kill between the two renames of an overwrite used to leave no ``last`` at all (resume
    then silently restarted the phase); now the complete new checkpoint is rolled forward, and a
    kill before the renames keeps the previous one."""
    import os

    from graftkit import checkpoint

    last = tmp_path / "last"
    save_checkpoint(last, {"model": {"w": torch.zeros(2)}}, {"epoch": 0})
    replace = os.replace

    class Killed(BaseException):
        pass

    def killed_replace(src, dst):
        if stage == "before_renames" or str(dst) == str(last):
            raise Killed  # the process dies here; nothing of it cleans up
        replace(src, dst)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", lambda *a, **k: None)  # no cleanup on death
    monkeypatch.setattr(checkpoint.os, "replace", killed_replace)
    with pytest.raises(Killed):
        save_checkpoint(last, {"model": {"w": torch.ones(2)}}, {"epoch": 1})
    monkeypatch.undo()
    assert last.exists() == (stage == "before_renames")
    assert checkpoint.recover_checkpoint(last) == (stage == "between_renames")
    groups, state = load_checkpoint(last)
    want = 1 if stage == "between_renames" else 0
    assert state["epoch"] == want and torch.equal(
        groups["model"]["w"], torch.full((2,), float(want))
    )
    assert not list(tmp_path.glob(".old-*"))
