"""Faults a long training job meets never crash or lie: each ends in one line naming the file,
folder or key (exit code 2), in a line saying what was done instead, or in a run that continues
where it stopped.

Table-driven, in the style of ``test_bad_input.py``, over one finished phase-1 smoke run on a
tiny synthetic cohort:

- ``CONFIG``: values no phase can train with, refused before any work with the key named;
- ``DAMAGE`` x ``READERS``: a truncated, zeroed, foreign or missing file of a checkpoint, named
  with what is wrong by every command that reads it (``eval``, ``generate``, ``--resume``,
  ``--init-from``, ``--warm-bridge``) and by ``GraftedLM.from_pretrained``;
- ``STORAGE``: a write the storage refuses (ENOSPC, EDQUOT, EROFS, EACCES, EIO, ESTALE),
  injected where graftkit writes checkpoints, metrics, history and caches; a real full and a
  read-only tmpfs where the machine allows mounting one; and a run whose checkpoint write fails
  mid-phase, then resumes;
- ``GENERATE``: every fallback of ``graftkit generate`` said, positions out of order refused as
  the dataset refuses them;
- the run folder's owner: a second writer refused naming the holder, a killed writer's lock
  taken over, two runs started into one folder, the 2-process launches (slow);
- long texts: cut to the token budget, counted once, evaluation's memory bounded (slow);
- what else a multi-day job meets: a process killed while writing a checkpoint, a rank that dies
  under ``torchrun`` (slow), a network file system without ``flock`` or slow to write.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from graftkit_ct_rate import layout
from graftkit_ct_rate.synth import synthesize
from safetensors.torch import save_file

from graftkit.cli import main
from graftkit.rundir import HOLDER_FILE, LOCK_ENV, RunDir

TINY = {"n_train": 16, "n_valid": 8, "dim": 16, "seed": 3, "verify_reports": 0}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "cohort"
    synthesize(root, **TINY)
    return root


def run_argv(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "--quiet", "run", "ct_rate", "--profile", "smoke", "--data-dir", str(data),
        "--output-dir", str(run_dir), "--set", f"data.cache_dir={run_dir.parent / 'cache'}",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished(pristine, tmp_path_factory) -> Path:
    """A finished phase-1 smoke run (no evaluation): the run folder the damage cases copy."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(run_argv(pristine, run_dir, "--phases", "1", "--no-eval"))
    assert code == 0, err.getvalue()[-3000:]
    return run_dir


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    shutil.copytree(finished.parent / "cache", tmp_path / "cache")
    return shutil.copytree(finished, tmp_path / "run")


def one_line_error(capsys, argv: list[str], *expected: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("graftkit ")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in "\n".join(err), err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def resum(folder: Path, name: str) -> None:
    """Re-sum ``name`` in ``folder``'s manifest: the damage then passes the checksums."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


# -- values that cannot train --------------------------------------------------------------------

#: (``--set`` value, substrings of the one line): refused while the config is built, no work done
CONFIG = [
    ("phases.p1.lr=inf", ("phases.p1.lr = inf", "finite")),
    ("phases.p1.lr=.nan", ("phases.p1.lr = nan", "finite")),
    ("phases.p1.lr=-1e-3", ("phases.p1.lr", "greater than 0")),
    ("phases.p2.losses.infonce=.inf", ("phases.p2.losses.infonce = inf", "finite")),
    ("objective.infonce_init_temperature=inf", ("objective.infonce_init_temperature", "finite")),
    ("eval.generation.temperature=0", ("eval.generation.temperature", "greater than 0")),
    ("eval.generation.top_p=1.5", ("eval.generation.top_p", "less than or equal to 1")),
    ("model.lora.dropout=1", ("model.lora.dropout", "less than 1")),
    ("phases.p3.callbacks.freeze_lora.after_epoch=.inf",
     ("phases.p3.callbacks.freeze_lora.after_epoch", "finite")),
    ("data.synth={n_train: .inf}", ("data.synth.n_train", "finite")),
    ("phases.p1.weight_decay=500", ("phases.p1.weight_decay", "lr 0.003 x weight_decay 500 >= 1")),
    ("phases.p1.lr=1e400", ("phases.p1.lr = inf", "finite")),  # YAML reads 1e400 as inf
]  # fmt: skip


@pytest.mark.parametrize(("value", "expected"), CONFIG, ids=[c[0] for c in CONFIG])
def test_a_value_that_cannot_train_is_refused_before_any_work(
    pristine, tmp_path, capsys, value, expected
):
    argv = run_argv(pristine, tmp_path / "run", "--set", value)
    one_line_error(capsys, argv, *expected)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


# -- damage, named by its file --------------------------------------------------------------------


def truncated_weights(folder: Path) -> tuple[str, str]:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "model.safetensors fails its checksum", "truncated"


def zeroed_weights(folder: Path) -> tuple[str, str]:
    path = folder / "model.safetensors"
    path.write_bytes(bytes(path.stat().st_size))
    return "model.safetensors fails its checksum", "zeroed"


def foreign_weights(folder: Path) -> tuple[str, str]:
    """Another model's (valid) file, with the manifest re-summed: only its content tells."""
    save_file({"foreign.weight": torch.ones(3)}, str(folder / "model.safetensors"))
    resum(folder, "model.safetensors")
    return "does not fit", "missing ['"


def truncated_state(folder: Path) -> tuple[str, str]:
    path = folder / "state.json"
    path.write_bytes(path.read_bytes()[:9])
    return "state.json fails its checksum", "truncated"


def zeroed_manifest(folder: Path) -> tuple[str, str]:
    path = folder / "manifest.json"
    path.write_bytes(bytes(path.stat().st_size))
    return "manifest.json is zeroed", "all 0"


def missing_file(folder: Path) -> tuple[str, str]:
    (folder / "extra.safetensors").unlink()
    return "partial", "extra.safetensors is missing"


DAMAGE = [truncated_weights, zeroed_weights, foreign_weights, truncated_state, zeroed_manifest,
          missing_file]  # fmt: skip


def _eval(run_dir: Path, pristine: Path, tmp: Path) -> tuple[Path, list[str]]:
    return run_dir / "phase1", ["--quiet", "eval", str(run_dir), "--limit", "1", "--no-ablations"]


def _generate(run_dir: Path, pristine: Path, tmp: Path) -> tuple[Path, list[str]]:
    case = tmp / "case.npz"
    np.savez(case, embeddings=np.zeros((5, 16), np.float32), z_mm=np.arange(5.0))
    return run_dir / "phase1", ["--quiet", "generate", str(run_dir), "--embeddings", str(case)]


def _resume(run_dir: Path, pristine: Path, tmp: Path) -> tuple[Path, list[str]]:
    import yaml

    shutil.rmtree(run_dir / "phase1")  # phase 1 was killed: its epoch checkpoint is all there is
    cache = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["cache_dir"]
    argv = [*run_argv(pristine, run_dir, "--phases", "1"), "--set", f"data.cache_dir={cache}"]
    return RunDir(run_dir).epoch_checkpoint(1), [*argv, "--resume"]


def _init_from(run_dir: Path, pristine: Path, tmp: Path) -> tuple[Path, list[str]]:
    argv = run_argv(pristine, tmp / "new", "--phases", "2", "--init-from", str(run_dir / "phase1"))
    return run_dir / "phase1", argv


def _warm_bridge(run_dir: Path, pristine: Path, tmp: Path) -> tuple[Path, list[str]]:
    argv = run_argv(
        pristine, tmp / "new", "--phases", "3", "--warm-bridge", str(run_dir / "phase1")
    )
    return run_dir / "phase1", argv


#: each command that reads a checkpoint: (which folder it reads, its argv)
READERS = [_eval, _generate, _resume, _init_from, _warm_bridge]


@pytest.mark.parametrize("reader", READERS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_a_damaged_checkpoint_is_named_with_what_is_wrong(
    run_copy, pristine, tmp_path, capsys, reader, damage
):
    """Checksums catch a truncated, zeroed or missing file before any work; a foreign file with
    a valid manifest is found when the model loads it, naming the tensors that are missing."""
    folder, argv = reader(run_copy, pristine, tmp_path)
    what, detail = damage(folder)
    line = one_line_error(capsys, argv, what, detail)
    assert str(folder) in line


def test_a_foreign_checkpoint_names_its_missing_tensors_at_load(run_copy, pristine, capsys):
    foreign_weights(run_copy / "phase1")
    argv = ["--quiet", "eval", str(run_copy), "--limit", "1", "--no-ablations"]
    one_line_error(
        capsys, argv, str(run_copy / "phase1"), "does not fit", "missing ['calibrator.alpha'"
    )


def test_a_damaged_later_phase_is_named_when_an_earlier_one_is_used(run_copy, capsys):
    """phase 2's weights cut in half: eval warns with the file and what is wrong, and uses
    phase 1 (into RUN/eval/phase1, not over the run's own results)."""
    shutil.copytree(run_copy / "phase1", run_copy / "phase2")
    (run_copy / "checkpoints" / "phase2").mkdir()
    truncated_weights(run_copy / "phase2")
    assert main(["eval", str(run_copy), "--limit", "1", "--no-ablations"]) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {run_copy / 'phase2'} is corrupted: model.safetensors fails" in err
    assert "truncated" in err and "using phase1 (phase 1" in err
    metrics = json.loads(
        (run_copy / "eval" / "phase1-limit1-no-ablations" / "metrics.json").read_text()
    )
    assert "phase2" in str(metrics["eval"]["checkpoint"]["run_damaged"])


@pytest.mark.parametrize(
    ("name", "cut", "detail"),
    [
        ("bridge.safetensors", 0.5, "truncated"),
        ("adapter_model.safetensors", 0.0, "zeroed"),
        ("graft_config.json", 0.5, "truncated"),
    ],
)
def test_from_pretrained_names_a_damaged_file(finished, tmp_path, name, cut, detail):
    """``GraftedLM.from_pretrained`` on a saved folder (no manifest): the damaged file by its
    structure, before the base model is touched."""
    from graftkit.bridge import GraftedLM
    from graftkit.checkpoint import CheckpointError

    folder = shutil.copytree(finished / "phase1" / "pretrained", tmp_path / "pretrained")
    path = folder / name
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * cut)] if cut else bytes(len(raw)))
    with pytest.raises(CheckpointError, match=detail) as info:
        GraftedLM.from_pretrained(folder, base_model=None)
    assert str(info.value).startswith(f"{path} is ")


def test_damage_is_described_by_structure(tmp_path):
    """The descriptions, against files built by hand from the safetensors layout (8-byte
    little-endian header length, JSON header, data) and from JSON text."""
    from graftkit.checkpoint import json_damage, safetensors_damage

    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}})
    good = len(header).to_bytes(8, "little") + header.encode() + bytes(24)
    cases = {
        "good": (good, None),
        "short": (good[:5], "not even the 8-byte header length"),
        "cut in the data": (good[:-4], "need 24 bytes of data, the file holds 20"),
        "cut in the header": (good[:20], f"declares {len(header)} bytes"),
        "zeroed": (bytes(len(good)), "zeroed"),
        "not safetensors": (b"\x10" + bytes(7) + b"not json at all!", "header is not JSON"),
    }
    for name, (raw, expected) in cases.items():
        (tmp_path / f"{name}.safetensors").write_bytes(raw)
        found = safetensors_damage(tmp_path / f"{name}.safetensors")
        assert (found is None) if expected is None else (expected in found), (name, found)
    (tmp_path / "g.safetensors").write_bytes(good)
    assert "missing tensor b" in safetensors_damage(tmp_path / "g.safetensors", ["w", "b"])
    for text, expected in (('{"a": [1, 2', "truncated"), ('{"a" 1}', "line 1 column 6"),
                           ("", "empty"), ("\0\0\0", "zeroed")):  # fmt: skip
        (tmp_path / "f.json").write_text(text)
        assert expected in json_damage(tmp_path / "f.json"), text


def test_a_damaged_metrics_file_is_named(run_copy, capsys):
    (run_copy / "metrics.json").write_bytes(b'{"data": {"train": 1')
    one_line_error(
        capsys, ["--quiet", "eval", str(run_copy)], str(run_copy / "metrics.json"), "truncated"
    )


# -- storage faults ------------------------------------------------------------------------------

#: errno, what the line says
STORAGE = [
    (errno.ENOSPC, "No space left on device (ENOSPC); free space"),
    (errno.EDQUOT, "(EDQUOT); free space or raise the quota"),
    (errno.EROFS, "Read-only file system (EROFS)"),
    (errno.EACCES, "Permission denied (EACCES)"),
    (errno.EIO, "Input/output error (EIO); the device or network file system failed"),
    (errno.ESTALE, "(ESTALE)"),
]


def _safetensors_error(code: int) -> Exception:
    """What safetensors raises: its own type, the OS error only in the message."""
    return Exception(f"Error while serializing: I/O error: {os.strerror(code)} (os error {code})")


def _failing(code: int, library: bool) -> Callable[..., None]:
    def fail(*args, **kwargs):
        if library:
            raise _safetensors_error(code)
        raise OSError(code, os.strerror(code))

    return fail


def _checkpoint(target: Path) -> None:
    from graftkit.checkpoint import save_checkpoint

    save_checkpoint(target, {"model": {"w": torch.ones(2)}}, {"epoch": 1})


def _metrics(target: Path) -> None:
    RunDir(target.parent).update_metrics({"eval": {"macro_f1": 0.5}})


def _history(target: Path) -> None:
    RunDir(target.parent).append_history({"phase": 1, "epoch": 2, "loss": 0.5})


#: (writer, the path it is named by, the function that fails, whether it is the library's type)
WRITERS = [
    ("checkpoint", _checkpoint, "ckpt", "graftkit.checkpoint.save_file", True),
    ("metrics", _metrics, "metrics.json", "graftkit.io.os.replace", False),
    ("history", _history, "history.jsonl", "graftkit.rundir.atomic_write_text", False),
]


@pytest.mark.parametrize(("code", "said"), STORAGE, ids=[errno.errorcode[c] for c, _ in STORAGE])
@pytest.mark.parametrize("writer", WRITERS, ids=[w[0] for w in WRITERS])
def test_a_refused_write_is_one_line_and_keeps_the_previous_file(
    tmp_path, monkeypatch, code, said, writer
):
    from graftkit.checkpoint import verify_checkpoint
    from graftkit.errors import StorageError, one_line

    _, write, name, target_fn, library = writer
    target = tmp_path / name
    _checkpoint(tmp_path / "ckpt")
    (tmp_path / "metrics.json").write_text('{"eval": {"macro_f1": 0.1}}')
    (tmp_path / "history.jsonl").write_text('{"phase": 1, "epoch": 2, "loss": 9}\n')  # a rewrite
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    monkeypatch.setattr(target_fn, _failing(code, library))
    with pytest.raises(StorageError) as info:
        write(target)
    line = one_line(info.value)
    assert line.startswith(f"{target}: cannot write: ") and said in line, line
    verify_checkpoint(tmp_path / "ckpt")  # the complete previous checkpoint is still there
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "ckpt"])


def test_a_storage_fault_no_writer_named_is_still_one_line(monkeypatch, capsys, tmp_path):
    """The command line's safety net: a library's storage error from a write graftkit does not
    wrap (here ``graftkit synth``'s cohort) is one line, exit 2, not a traceback."""
    from graftkit_ct_rate.dataset import CTRateDataset

    def full(cls, *args, **kwargs):
        raise _safetensors_error(errno.ENOSPC)

    monkeypatch.setattr(CTRateDataset, "synthesize", classmethod(full))
    one_line_error(
        capsys,
        ["--quiet", "synth", "ct_rate", "--output", str(tmp_path / "c"), "--n-train", "4"],
        "cannot write: No space left on device (ENOSPC)",
    )


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=errno.errorcode.get)
def test_an_export_stops_at_a_refused_write_with_one_line(tmp_path, capsys, monkeypatch, code):
    """``graftkit embed``: a full or failing disk is not a bad volume; the run stops at the
    first refused write, naming the file, instead of failing every volume after it."""
    import graftkit.embed

    for name in ("a", "b"):
        np.save(tmp_path / f"{name}.npy", np.zeros((3, 4), np.float32))
    monkeypatch.setattr(graftkit.embed.np, "savez", _failing(code, library=False))
    out = tmp_path / "emb"
    argv = ["--quiet", "embed", "precomputed", "--input", str(tmp_path / "a.npy"),
            str(tmp_path / "b.npy"), "--output", str(out)]  # fmt: skip
    one_line_error(capsys, argv, f"{out / 'a.npz'}: cannot write: ", errno.errorcode[code])
    assert sorted(p.name for p in out.iterdir()) == []


@pytest.mark.slow
def test_a_full_disk_mid_phase_is_one_line_and_the_run_resumes(
    pristine, tmp_path, capsys, monkeypatch
):
    """The disk fills while phase 3 writes its second epoch checkpoint: one line naming that
    checkpoint, exit 2, the first epoch's checkpoint intact; after space is freed ``--resume``
    trains epoch 2 again from it and finishes, and the history holds each epoch once."""
    import graftkit.checkpoint as checkpoint

    run_dir = tmp_path / "run"
    argv = run_argv(pristine, run_dir, "--phases", "1-3", "--set", "eval.ablations=false")
    real = checkpoint.save_file
    writes = []

    def save_file(tensors, filename, *args, **kwargs):
        writes.append(filename)
        if (
            "checkpoints/phase3/.tmp-last" in filename
            and len([w for w in writes if "checkpoints/phase3/.tmp-last" in w]) > 4
        ):  # the second epoch checkpoint (4 tensor groups each)
            raise _safetensors_error(errno.ENOSPC)
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    last = RunDir(run_dir).epoch_checkpoint(3)
    one_line_error(
        capsys,
        argv,
        f"{last}: cannot write: No space left on device (ENOSPC)",
        "the last complete checkpoint is intact",
        "--resume",
    )
    assert json.loads((last / "state.json").read_text())["epoch"] == 0  # epoch 1's, 0-based
    assert RunDir(run_dir).is_complete(2) and not (run_dir / "phase3").exists()
    monkeypatch.setattr(checkpoint, "save_file", real)
    assert main([*argv, "--resume"]) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    epochs = [(r["phase"], r["epoch"]) for r in rows if "epoch" in r]
    assert epochs == [(1, 1), (2, 1), (3, 1), (3, 2)]
    assert RunDir(run_dir).is_complete(3)


@pytest.fixture
def tmpfs(tmp_path) -> Path:
    """A 1 MiB tmpfs (root with CAP_SYS_ADMIN only; skipped elsewhere)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_tmpfs_keeps_the_last_checkpoint(tmpfs):
    from graftkit.checkpoint import save_checkpoint, verify_checkpoint
    from graftkit.errors import StorageError

    target = tmpfs / "checkpoints" / "last"
    save_checkpoint(target, {"model": {"w": torch.ones(1000)}}, {"epoch": 0})
    with pytest.raises(StorageError, match="No space left on device"):
        save_checkpoint(target, {"model": {"w": torch.ones(400_000)}}, {"epoch": 1})
    verify_checkpoint(target)
    assert json.loads((target / "state.json").read_text())["epoch"] == 0
    assert [p.name for p in target.parent.iterdir()] == ["last"]


def test_a_read_only_file_system_is_one_line_for_an_export(tmpfs, capsys, tmp_path):
    (tmp_path / "in.csv").write_text("id,text\n1,Cardiomegaly.\n")
    (tmpfs / "out").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    one_line_error(
        capsys,
        ["--quiet", "label", "--extractor", "ct_rate-rules", "--text-column", "text",
         "--input", str(tmp_path / "in.csv"), "--output", str(tmpfs / "out" / "labels.csv")],
        f"--output {tmpfs / 'out'}: not writable: Read-only file system (EROFS)",
    )  # fmt: skip


# -- graftkit generate: fallbacks said, bad positions refused ------------------------------------


def _case(tmp: Path, name: str, **arrays) -> Path:
    path = tmp / name
    if path.suffix == ".npy":
        np.save(path, arrays["embeddings"])
    else:
        np.savez(path, **arrays)
    return path


EMB = np.random.default_rng(0).normal(size=(6, 16)).astype(np.float32)

#: (case, file name, arrays, one tuple of substrings per warning line)
GENERATE_FALLBACKS = [
    ("npz without z_mm", "a.npz", {"embeddings": EMB},
     [("no z_mm in the .npz", "positions fall back to the slice index (1 mm per slice)")]),
    ("npy", "b.npy", {"embeddings": EMB}, [("a .npy holds no z_mm", "1 mm per slice")]),
    ("float64 npy", "c.npy", {"embeddings": EMB.astype(np.float64)},
     [("cast from float64 to float32",), ("1 mm per slice",)]),
    ("float64 npz with z_mm", "d.npz", {"embeddings": EMB.astype(np.float64), "z_mm": np.arange(6.0)},
     [("cast from float64 to float32",)]),
    ("float16 npz with z_mm: nothing to say", "e.npz",
     {"embeddings": EMB.astype(np.float16), "z_mm": np.arange(6.0)}, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "name", "arrays", "said"), GENERATE_FALLBACKS, ids=[c[0] for c in GENERATE_FALLBACKS]
)
def test_every_generate_fallback_is_said_naming_the_input(
    finished, tmp_path, capsys, case, name, arrays, said
):
    path = _case(tmp_path, name, **arrays)
    assert main(["--quiet", "generate", str(finished), "--embeddings", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip()  # the report
    warnings = [line for line in captured.err.splitlines() if line.strip()]
    assert len(warnings) == len(said), warnings
    for line, parts in zip(warnings, said, strict=True):
        assert line.startswith(f"graftkit generate: warning: {path}: "), line
        assert all(part in line for part in parts), (parts, line)


@pytest.mark.parametrize(
    ("z", "expected"),
    [
        ([0.0, 1.5, 3.0, 2.0, 4.5, 6.0], "slice 3 at 2 mm comes after 3 mm"),
        ([6.0, 4.5, 3.0, 1.5, 0.0, -1.5], "slice 1 at 4.5 mm comes after 6 mm"),
    ],
    ids=["out of order", "decreasing"],
)
def test_positions_out_of_order_are_refused_by_generate_as_by_the_dataset(
    finished, pristine, tmp_path, capsys, z, expected
):
    from graftkit_ct_rate.dataset import CTRateDataset

    from graftkit.config import DataConfig

    path = _case(tmp_path, "case.npz", embeddings=EMB, z_mm=np.asarray(z))
    argv = ["--quiet", "generate", str(finished), "--embeddings", str(path)]
    one_line_error(capsys, argv, str(path), "z_mm is not increasing", expected)
    # the same file as a cohort's volume: skipped by name with the same reason
    cohort = shutil.copytree(pristine, tmp_path / "cohort")
    name = pd.read_csv(layout.labels_csv(cohort, "train")).VolumeName[0]
    emb = cohort / "embeddings" / f"{layout.volume_stem(name)}.npy"
    array = np.load(emb)
    emb.unlink()
    z_vol = np.arange(len(array), dtype=np.float64)
    z_vol[3], z_vol[2] = z_vol[2], z_vol[3]
    np.savez(emb.with_suffix(".npz"), embeddings=array, z_mm=z_vol)
    ds = CTRateDataset(DataConfig(data_dir=cohort), tmp_path / "work")
    ds.records("train")
    reasons = {n: r for _, n, r in ds.skips.entries}
    assert (
        reasons[name].startswith("bad positions:")
        and "slice 3 at 2 mm comes after 3 mm" in (reasons[name])
    )


def test_a_volume_whose_positions_turn_bad_after_the_scan_is_skipped_at_load(tmp_path):
    """The generic check: any dataset's volume is refused at load, skipped by name in training
    and an error naming it in evaluation (where every volume must be scored)."""
    from graftkit.data import DataError, Skipped, Volume, VolumeDataset

    class Positions:
        skips = __import__("graftkit.data", fromlist=["SkipLog"]).SkipLog()

        def load(self, volume):
            return torch.zeros(4, 2), torch.tensor([0.0, 2.0, 1.0, 3.0])

    volume = Volume("v1", "train", np.zeros(2), "text")
    item = VolumeDataset(Positions(), [volume], skip_unloadable=True)[0]
    assert isinstance(item, Skipped) and "slice 2 at 1 mm comes after 2 mm" in item.reason
    with pytest.raises(DataError, match="bad positions: v1"):
        VolumeDataset(Positions(), [volume])[0]


# -- one writer per run folder -------------------------------------------------------------------

HOLD = """
import sys, time
from graftkit.rundir import RunDir
with RunDir(sys.argv[1]).lock("graftkit run"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@contextlib.contextmanager
def held(folder: Path, seconds: float = 60):
    """Another process holding ``folder``'s lock."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("verb", ["run", "resume", "eval"])
def test_a_second_writer_is_refused_naming_the_folder_and_the_holder(
    run_copy, pristine, capsys, verb
):
    argv = {
        "run": run_argv(pristine, run_copy, "--phases", "1"),
        "resume": [*run_argv(pristine, run_copy, "--phases", "1"), "--resume"],
        "eval": ["--quiet", "eval", str(run_copy), "--limit", "1"],
    }[verb]
    with held(run_copy) as holder:
        before = {p: p.stat().st_mtime_ns for p in run_copy.rglob("*")}
        start = time.monotonic()
        one_line_error(
            capsys, argv, f"{run_copy} is in use by graftkit run (pid {holder.pid} on", "wait"
        )
        assert time.monotonic() - start < 30  # refused at once, never waiting on the lock
        assert {p: p.stat().st_mtime_ns for p in run_copy.rglob("*")} == before  # untouched


def test_a_killed_holders_lock_is_taken_over_and_said(tmp_path, capsys):
    folder = RunDir(tmp_path / "run")
    folder.path.mkdir()
    pid = _dead_pid()
    record = {"pid": pid, "host": socket.gethostname(), "command": "graftkit run", "started": 0}
    (folder.path / HOLDER_FILE).write_text(json.dumps(record))
    with folder.lock("graftkit run"):
        assert folder.lock_holder()["pid"] == os.getpid()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"graftkit run: {folder.path}: took over the lock of graftkit run (pid {pid} on "
        f"{socket.gethostname()}, since "
    )
    assert err[0].endswith("), which is no longer running")
    assert not (folder.path / HOLDER_FILE).exists()  # released: no record left


def test_a_holder_record_under_a_live_process_is_never_taken_over(tmp_path):
    """The lock file replaced (deleted by hand) while a writer runs: the record of that live
    writer still refuses a second one."""
    from graftkit.rundir import RunLockedError

    folder = RunDir(tmp_path / "run")
    with held(folder.path) as holder:
        (folder.path / ".lock").unlink()
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"), folder.lock("graftkit"):
            pass


def test_a_refusal_in_the_instant_before_the_holder_writes_its_record_names_it(tmp_path):
    """Two runs started at once: the winner has the lock but has not yet written who it is.
    The refused one waits that instant out and names the winner, not "another process"."""
    from graftkit.rundir import RunLockedError

    folder = RunDir(tmp_path / "run")
    with held(folder.path) as holder:
        record = folder.lock_holder()
        (folder.path / HOLDER_FILE).unlink()  # back to the instant before the record
        late = threading.Timer(
            0.3, lambda: (folder.path / HOLDER_FILE).write_text(json.dumps(record))
        )
        late.start()
        try:
            with pytest.raises(RunLockedError) as refused, folder.lock("graftkit"):
                pass
        finally:
            late.join()
    assert f"in use by graftkit run (pid {holder.pid} on" in str(refused.value)


SOFT = """
import sys, filelock
from graftkit.rundir import RunDir, RunLockedError

def no_flock(self, *args, **kwargs):
    raise NotImplementedError("FileSystem does not appear to support flock")

filelock.FileLock.acquire = no_flock
try:
    with RunDir(sys.argv[1]).lock("graftkit eval"):
        print("acquired")
except RunLockedError as err:
    print(err)
"""


def test_without_flock_a_soft_lock_is_used_and_a_dead_ones_taken_over(
    tmp_path, monkeypatch, capsys
):
    """A network file system without ``flock`` (filelock 3.x raises NotImplementedError there):
    the lock is a lock file whose holder record tells whether it is stale. A killed holder's is
    taken over; a live one refuses another process."""
    import filelock

    def no_flock(self, *args, **kwargs):
        raise NotImplementedError("FileSystem does not appear to support flock")

    monkeypatch.setattr(filelock.FileLock, "acquire", no_flock)
    folder = RunDir(tmp_path / "run")
    folder.path.mkdir()
    (folder.path / ".lock").write_text("")  # a soft lock left by a killed holder ...
    record = {"pid": _dead_pid(), "host": socket.gethostname(), "command": "graftkit run"}
    (folder.path / HOLDER_FILE).write_text(json.dumps(record))
    with folder.lock("graftkit run"):  # ... is taken over
        # not one of this holder's own processes (those inherit LOCK_ENV and share the lock)
        env = {k: v for k, v in os.environ.items() if k != LOCK_ENV}
        other = subprocess.run(
            [sys.executable, "-c", SOFT, str(folder.path)], capture_output=True, text=True, env=env
        )
    assert f"is in use by graftkit run (pid {os.getpid()} on" in other.stdout, other
    assert f"pid {record['pid']}" in capsys.readouterr().err
    other = subprocess.run(
        [sys.executable, "-c", SOFT, str(folder.path)], capture_output=True, text=True
    )
    assert other.stdout.strip() == "acquired", other  # released


def test_a_slow_file_system_never_shows_a_half_written_file(tmp_path, monkeypatch):
    """Writes that take long (a slow network file system): a reader polling the files meanwhile
    sees the old content or the new, whole."""
    import graftkit.io as gio

    folder = RunDir(tmp_path)
    folder.update_metrics({"eval": {"macro_f1": 0.1}})
    folder.append_history({"phase": 1, "epoch": 1, "loss": 1.0})
    real = gio.os.replace

    def slow_replace(src, dst):
        time.sleep(0.2)
        real(src, dst)

    monkeypatch.setattr(gio.os, "replace", slow_replace)
    seen, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            seen.append(folder.read_metrics()["eval"]["macro_f1"])
            seen.append(len(folder.history_rows()))

    reader = threading.Thread(target=read)
    reader.start()
    folder.update_metrics({"eval": {"macro_f1": 0.9}})
    folder.append_history({"phase": 1, "epoch": 1, "loss": 0.5})  # a rewrite: epoch 1 again
    stop.set()
    reader.join()
    assert set(seen) <= {0.1, 0.9, 1} and folder.history_rows()[-1]["loss"] == 0.5


# -- a process killed while writing a checkpoint --------------------------------------------------


def killed_before_the_renames(last: Path) -> None:
    tmp = last.with_name(".tmp-last-killed")
    shutil.copytree(last, tmp)
    (tmp / "manifest.json").unlink()  # killed while writing the new one


def killed_between_the_renames(last: Path) -> None:
    shutil.copytree(last, last.with_name(".tmp-last-new"))
    os.replace(last, last.with_name(".old-last-12345"))


@pytest.mark.parametrize(
    "kill", [killed_before_the_renames, killed_between_the_renames], ids=lambda f: f.__name__
)
def test_a_checkpoint_write_killed_midway_leaves_a_resumable_checkpoint(run_copy, kill):
    rundir = RunDir(run_copy)
    last = rundir.epoch_checkpoint(1)
    kill(last)
    rundir.recover([1])
    rundir.check_resumable([1])
    assert rundir.is_complete(1) and (last / "manifest.json").is_file()
    assert sorted(p.name for p in last.parent.iterdir() if not p.name.startswith(".tmp")) == [
        "last"
    ]


def test_history_rows_a_killed_process_wrote_past_its_checkpoint_are_replaced(tmp_path):
    """Killed (or the disk full) after an epoch's history row and before its checkpoint: the
    resumed run trains that epoch again and its row replaces the old one; a row cut short by
    the kill is dropped."""
    folder = RunDir(tmp_path)
    folder.append_history({"phase": 1, "epoch": 1, "loss": 3.0})
    folder.append_history({"phase": 2, "epoch": 1, "loss": 2.0})
    folder.append_history({"phase": 2, "epoch": 2, "loss": 1.5})  # no checkpoint after this
    with folder.history.open("a") as fh:
        fh.write('{"phase": 2, "epo')  # killed mid-line
    folder.append_history({"phase": 2, "event": "config_change", "changes": {}})
    folder.append_history({"phase": 2, "epoch": 2, "loss": 1.4})
    rows = [json.loads(line) for line in folder.history.read_text().splitlines()]
    assert rows == [
        {"phase": 1, "epoch": 1, "loss": 3.0},
        {"phase": 2, "epoch": 1, "loss": 2.0},
        {"phase": 2, "event": "config_change", "changes": {}},
        {"phase": 2, "epoch": 2, "loss": 1.4},
    ]


# -- long texts: cut to the budget, counted, evaluation's memory bounded --------------------------


def test_token_nll_and_llm_cls_hold_at_most_the_budget(monkeypatch):
    """A 50,000-character response reaches the model as at most ``max_length`` tokens, and the
    cut responses are counted; short ones are untouched."""
    from types import SimpleNamespace

    from graftkit.eval.evaluate import llm_cls_on_reports, token_nll
    from graftkit.lm import encode_chat
    from graftkit.lm.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["The heart is normal. No effusion is seen."] * 20, 300)
    widths = []

    class Spy(torch.nn.Module):
        heads = SimpleNamespace(llm_cls=lambda state: state[:, :2])

        def forward(self, input_ids, attention_mask, visual_tokens, output_hidden_states=False):
            widths.append(input_ids.shape[1])
            b, t = input_ids.shape
            return SimpleNamespace(
                logits=torch.zeros(b, t, len(tokenizer)), hidden_states=[torch.zeros(b, t, 4)]
            )

    long = "The heart is normal. " * 2400  # 50,400 characters
    short = "No effusion is seen."
    tokens = torch.zeros(2, 3, 4)
    full = len(encode_chat(tokenizer, "Describe.", long, 3)["input_ids"])
    assert full > 5000
    cut: set[int] = set()
    nll = token_nll(Spy(), tokenizer, "Describe.", [short, long], tokens, max_length=300, cut=cut)
    assert widths == [300] and cut == {1}
    prompt = len(encode_chat(tokenizer, "Describe.", None, 3)["input_ids"])
    assert len(nll[1]) == 300 - prompt and len(nll[0]) < 30  # the response tokens kept
    widths.clear()
    cut = set()
    llm_cls_on_reports(
        Spy(), tokenizer, "Describe.", [long, short], tokens, max_length=256, cut=cut
    )
    assert widths == [256] and cut == {0}


@pytest.fixture(scope="module")
def long_report_run(pristine, tmp_path_factory):
    """phases 1-4 and the evaluation on a cohort whose first training and validation reports are
    50,000 characters long (the issue's case)."""
    base = tmp_path_factory.mktemp("long")
    data = shutil.copytree(pristine, base / "cohort")
    for split in ("train", "valid"):
        path = layout.reports_csv(data, split)
        frame = pd.read_csv(path, keep_default_na=False)
        text = frame.loc[0, "Findings_EN"]
        frame.loc[0, "Findings_EN"] = ((text + " ") * (50_000 // len(text) + 1))[:50_000].strip()
        frame.to_csv(path, index=False)
    run_dir = base / "run"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(run_argv(data, run_dir)[1:])  # not --quiet: the data lines matter
    return run_dir, code, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_a_50000_character_report_is_cut_counted_once_and_evaluated(long_report_run):
    run_dir, code, out, err = long_report_run
    assert code == 0, err[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cut = metrics["data"]["cut"]
    assert cut["training"]["max_length"] == 256
    assert cut["training"]["reports"] >= 2  # the long ones (and the narratives over 256 tokens)
    assert cut["training"]["longest"]["tokens"] > 10_000
    assert cut["evaluation"]["max_length"] == 4096
    assert cut["evaluation"]["reports"] == 1  # the long validation report, scored on 4,096
    assert metrics["eval"]["texts_cut"] == {"max_length": 4096, "nll": 1, "llm_cls": 0}
    lines = [line for line in out.splitlines() if " cut to " in line]
    assert len(lines) == 2, lines  # said once per run, for training and for the evaluation
    assert lines[0].startswith(f"data: {cut['training']['reports']} report(s) cut to 256 tokens")
    assert lines[1].startswith("data: 1 report(s) cut to 4096 tokens for evaluation")


# -- several processes ---------------------------------------------------------------------------
#
# Each launch runs in a session of its own, its output in files, and is ended whole afterwards
# (``_kill_session``), so that no process outlives its test.


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != LOCK_ENV}
    return {**env, "GRAFTKIT_CACHE": str(cache), "OMP_NUM_THREADS": "1",
            "ACCELERATE_USE_CPU": "true", "PYTHONUNBUFFERED": "1"}  # fmt: skip


def _graftkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "graftkit", *args]


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", "-m", "graftkit", *args]  # fmt: skip


class Launch:
    """A command in its own session with its stdout and stderr in files."""

    def __init__(self, argv: list[str], env: dict[str, str], logs: Path):
        logs.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = logs / "stdout.txt", logs / "stderr.txt"
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=err, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float = 900) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    @property
    def out(self) -> str:
        return self.out_path.read_text()

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    def wait_for(self, path: Path, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while not path.exists() and self.proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert path.exists(), f"{path} never appeared (exit {self.proc.poll()}): {self.err[-2000:]}"


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


@pytest.mark.slow
def test_two_runs_into_one_folder_one_is_refused(pristine, tmp_path):
    """The issue's case: two runs started at once into one --output-dir. One trains, the other
    is refused naming it; the history holds each epoch once."""
    run_dir = tmp_path / "run"
    argv = _graftkit(*run_argv(pristine, run_dir, "--phases", "1-2", "--no-eval"))
    env = _env(tmp_path / "cache")
    launches = [Launch(argv, env, tmp_path / f"log{i}") for i in range(2)]
    codes = [launch.wait() for launch in launches]
    assert sorted(codes) == [0, 2], [launch.err[-2000:] for launch in launches]
    winner, refused = sorted(launches, key=lambda launch: launch.proc.returncode)
    assert f"{run_dir} is in use by graftkit run (pid {winner.pid} on" in refused.err
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["epoch"]) for r in rows] == [(1, 1), (2, 1)]


@pytest.mark.slow
def test_a_killed_run_resumes_taking_over_its_lock(pristine, tmp_path):
    run_dir = tmp_path / "run"
    argv = _graftkit(*run_argv(pristine, run_dir, "--phases", "1-2", "--no-eval"))
    env = _env(tmp_path / "cache")
    first = Launch(argv, env, tmp_path / "first")
    try:
        first.wait_for(RunDir(run_dir).epoch_checkpoint(1) / "manifest.json")
    finally:
        first.kill()  # SIGKILL: no cleanup runs
    assert json.loads((run_dir / HOLDER_FILE).read_text())["pid"] == first.pid  # left behind
    resumed = Launch([*argv, "--resume"], env, tmp_path / "resumed")
    assert resumed.wait() == 0, resumed.err[-3000:]
    assert f"took over the lock of graftkit run (pid {first.pid} on" in resumed.err
    assert RunDir(run_dir).is_complete(2) and not (run_dir / HOLDER_FILE).exists()


LAUNCHED = """
import sys
from graftkit.rundir import RunDir, RunLockedError
try:
    with RunDir(sys.argv[1]).lock("graftkit run"):
        print("writes under", RunDir(sys.argv[1]).lock_holder()["pid"])
except RunLockedError as err:
    print(err)
"""


def test_the_processes_a_launcher_starts_share_its_lock(tmp_path):
    """``graftkit run`` holds the lock while it re-runs itself under ``accelerate launch``: the
    processes it starts inherit ``GRAFTKIT_RUN_LOCK`` and write under its lock; a process it did
    not start is refused."""
    folder = RunDir(tmp_path / "run")
    with folder.lock("graftkit run"):
        child = subprocess.run(
            [sys.executable, "-c", LAUNCHED, str(folder.path)], capture_output=True, text=True
        )
        stranger = subprocess.run(
            [sys.executable, "-c", LAUNCHED, str(folder.path)],
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if k != LOCK_ENV},
        )
    assert child.stdout.strip() == f"writes under {os.getpid()}", child
    assert f"is in use by graftkit run (pid {os.getpid()} on" in stranger.stdout, stranger
    # the variable of a launcher that has ended is no licence: the lock is taken over as usual
    dead = _dead_pid()
    record = {"pid": dead, "host": socket.gethostname(), "command": "graftkit run"}
    (folder.path / HOLDER_FILE).write_text(json.dumps(record))
    os.environ[LOCK_ENV] = f"{folder.lock_file.resolve()}:{dead}"
    try:
        with folder.lock("graftkit run"):
            assert folder.lock_holder()["pid"] == os.getpid()
    finally:
        os.environ.pop(LOCK_ENV, None)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_two_process_run_holds_one_lock_for_both(pristine, tmp_path):
    """Under ``torchrun`` (the cpu-2proc profile's 2 gloo processes) the main process (RANK 0)
    holds the lock for both: the run's own processes are not refused; another run is, naming
    it."""
    run_dir = tmp_path / "run"
    env = _env(tmp_path / "cache")
    common = run_argv(pristine, run_dir, "--phases", "1-2", "--no-eval")[1:]
    run = Launch(_torchrun(*[a if a != "smoke" else "cpu-2proc" for a in common]), env,
                 tmp_path / "ddp")  # fmt: skip
    try:
        run.wait_for(run_dir / HOLDER_FILE)
        holder = json.loads((run_dir / HOLDER_FILE).read_text())["pid"]
        second = Launch(_graftkit(*run_argv(pristine, run_dir, "--phases", "1")), env,
                        tmp_path / "second")  # fmt: skip
        assert second.wait() == 2, second.err[-2000:]
        assert run.wait() == 0, run.err[-3000:]
    finally:
        run.kill()
    assert "effective contrastive batch 32 (2 process(es) x 16)" in run.out
    assert f"is in use by graftkit run (pid {holder} on" in second.err
    assert holder != run.pid  # a worker of torchrun (its RANK 0), not torchrun itself
    assert not (run_dir / HOLDER_FILE).exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_a_rank_that_dies_under_torchrun_leaves_a_resumable_run(pristine, tmp_path):
    """Rank 1 is killed mid-run: torchrun ends the other rank and fails; the run folder keeps
    its last complete checkpoint, and ``--resume`` under torchrun takes over the lock rank 0
    left and finishes."""
    run_dir = tmp_path / "run"
    env = _env(tmp_path / "cache")
    argv = _torchrun(*run_argv(pristine, run_dir, "--phases", "1-2", "--no-eval")[1:])
    first = Launch(argv, env, tmp_path / "first")
    try:
        first.wait_for(RunDir(run_dir).epoch_checkpoint(1) / "manifest.json")
        rank1 = next(
            pid
            for pid in _children(first.pid)
            if b"LOCAL_RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes()
        )
        os.kill(rank1, signal.SIGKILL)
        assert first.wait(timeout=600) != 0
    finally:
        first.kill()
    stale = RunDir(run_dir).lock_holder()  # rank 0 was stopped: its record may be left
    resumed = Launch([*argv, "--resume"], env, tmp_path / "resumed")
    assert resumed.wait() == 0, resumed.err[-3000:]
    if stale is not None:
        assert f"took over the lock of graftkit run (pid {stale['pid']} on" in resumed.err
    assert RunDir(run_dir).is_complete(2) and RunDir(run_dir).lock_holder() is None
