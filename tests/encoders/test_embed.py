"""``graftkit.embed``: discovery, atomic outputs, resume, failure summary, sharding."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from graftkit_encoders.precomputed import PrecomputedEncoder

from graftkit.embed import is_complete, read_embeddings, run_embed
from graftkit.encoders import EncodedVolume, Encoder

from .conftest import TINY, ct_phantom, ct_small, write_dicom_series, write_nifti

HERE = Path(__file__).parent


class CountingEncoder(PrecomputedEncoder):
    """The precomputed encoder, counting the files it encodes."""

    def __init__(self, **options):
        super().__init__(**options)
        self.calls: list[str] = []

    def encode(self, path):
        self.calls.append(Path(path).name)
        return super().encode(path)


def make_embedding_inputs(folder: Path, n: int, dim: int = 8) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"valid_{i}_a_1.npy"
        np.save(path, np.full((3 + i, dim), i + 0.25, dtype=np.float32))
        paths.append(path)
    return paths


def test_ct_encoder_discovers_nifti_and_dicom_series(tmp_path):
    """``lejepa-ct`` owns its input discovery: NIfTI files and DICOM series folders (a file with
    no extension found by its magic), hidden files and other files left out unless named."""
    from graftkit_encoders.lejepa import LeJepaCTEncoder

    (tmp_path / "nii" / "sub").mkdir(parents=True)
    for name in (
        "nii/a.nii.gz",
        "nii/sub/b.nii",
        "nii/.hidden.nii.gz",
        "nii/notes.txt",
        "nii/e.npy",
    ):
        (tmp_path / name).write_bytes(b"")
    write_dicom_series(tmp_path / "dcm" / "patient1" / "series_1", n=2)
    series2 = tmp_path / "dcm" / "patient1" / "series_2"
    series2.mkdir()
    ct_small().save_as(str(series2 / "IM0001"))  # no extension: found by the DICM magic
    found = LeJepaCTEncoder.discover_inputs(
        [tmp_path / "nii", tmp_path / "dcm", tmp_path / "nii" / "notes.txt"]
    )
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == [
        "dcm/patient1/series_1",
        "dcm/patient1/series_2",
        "nii/a.nii.gz",
        "nii/notes.txt",
        "nii/sub/b.nii",
    ]
    assert [p.name for p in PrecomputedEncoder.discover_inputs(tmp_path / "nii")] == ["e.npy"]
    assert [LeJepaCTEncoder.input_stem(p) for p in found] == [
        "series_1",
        "series_2",
        "a",
        "notes.txt",
        "b",
    ]
    with pytest.raises(FileNotFoundError, match="missing"):
        LeJepaCTEncoder.discover_inputs(tmp_path / "missing")


class WaveEncoder(Encoder):
    """A non-CT encoder written to the base class alone: ``.wav`` files, one "slice" per byte."""

    name = "wave"
    dim = 2
    input_suffixes = (".wav",)

    def encode(self, path):
        data = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8).astype(np.float32)
        return EncodedVolume(
            np.stack([data, -data], axis=1), np.arange(len(data), dtype=np.float32)
        )


def test_a_non_ct_encoder_gets_its_own_inputs_with_no_ct_setting(tmp_path):
    """The core's discovery is the encoder's suffixes: a ``.wav`` encoder finds its files (not a
    NIfTI or DICOM file beside them) and names its outputs after them, with nothing to turn off."""
    (tmp_path / "in" / "deep").mkdir(parents=True)
    (tmp_path / "in" / "a.wav").write_bytes(bytes([1, 2, 3]))
    (tmp_path / "in" / "deep" / "b.WAV").write_bytes(bytes([4, 5]))
    (tmp_path / "in" / "c.nii.gz").write_bytes(b"")
    write_dicom_series(tmp_path / "in" / "series", n=2)
    inputs = WaveEncoder.discover_inputs(tmp_path / "in")
    assert [p.relative_to(tmp_path / "in").as_posix() for p in inputs] == ["a.wav", "deep/b.WAV"]
    summary = run_embed(WaveEncoder(), inputs, tmp_path / "out")
    assert summary.exit_code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.npz", "b.npz"]
    assert read_embeddings(tmp_path / "out" / "b.npz").embeddings.tolist() == [[4, -4], [5, -5]]
    assert "ending .wav" in WaveEncoder.describe_inputs()


def test_run_writes_float16_npz_and_resumes(tmp_path):
    inputs = make_embedding_inputs(tmp_path / "in", 4)
    out = tmp_path / "out"
    enc = CountingEncoder(expected_dim=8)
    seen = []
    summary = run_embed(enc, inputs, out, progress=lambda r: seen.append((r.name, r.status)))
    assert summary.exit_code == 0 and len(summary.ok) == 4 and summary.slices == 3 + 4 + 5 + 6
    assert seen == [(p.name, "ok") for p in inputs]
    with np.load(out / "valid_2_a_1.npz") as data:
        assert data["embeddings"].dtype == np.float16 and data["embeddings"].shape == (5, 8)
        np.testing.assert_array_equal(data["embeddings"], np.float16(2.25))
        np.testing.assert_allclose(data["z_mm"], np.arange(5.0))
    assert sorted(os.listdir(out)) == [f"valid_{i}_a_1.npz" for i in range(4)]

    # partial (truncated) and corrupt outputs are redone, complete ones skipped
    (out / "valid_1_a_1.npz").write_bytes((out / "valid_1_a_1.npz").read_bytes()[:40])
    np.savez(
        out / "valid_3_a_1.npz",
        embeddings=np.full((6, 8), np.nan, dtype=np.float16),
        z_mm=np.arange(6.0),
    )
    (out / ".valid_0_a_1.npz.tmp999").write_bytes(b"left by a killed run")
    enc.calls.clear()
    summary = run_embed(enc, inputs, out)
    assert enc.calls == ["valid_1_a_1.npy", "valid_3_a_1.npy"]
    assert sorted(summary.skipped) == ["valid_0_a_1.npy", "valid_2_a_1.npy"]
    assert all(is_complete(out / f"valid_{i}_a_1.npz", 8) for i in range(4))
    assert not (out / ".valid_0_a_1.npz.tmp999").exists()

    enc.calls.clear()
    run_embed(enc, inputs, out, resume=False, limit=2)
    assert enc.calls == ["valid_0_a_1.npy", "valid_1_a_1.npy"]


def test_failures_are_reported_and_run_continues(tmp_path):
    inputs = make_embedding_inputs(tmp_path / "in", 3)
    bad = tmp_path / "in" / "valid_9_a_1.npy"
    np.save(bad, np.ones((3, 5), dtype=np.float32))
    huge = tmp_path / "in" / "valid_8_a_1.npy"
    np.save(huge, np.full((3, 8), 1e6, dtype=np.float32))
    summary = run_embed(PrecomputedEncoder(expected_dim=8), [*inputs, bad, huge], tmp_path / "out")
    assert summary.exit_code == 1 and len(summary.ok) == 3
    assert summary.failed == [
        ("valid_9_a_1.npy", "embedding dim 5, expected 8"),
        ("valid_8_a_1.npy", "embeddings overflow float16 (|x| > 65504)"),
    ]
    text = summary.format()
    assert "failed 2" in text and "FAILED valid_9_a_1.npy: embedding dim 5" in text
    assert not (tmp_path / "out" / "valid_9_a_1.npz").exists()


def test_lejepa_run_reports_bad_volumes_by_name(tmp_path, tiny_options):
    """The real encoder on a folder with a good DICOM series, a single-slice one and a corrupt
    NIfTI: one output, two named failures, non-zero exit code."""
    from graftkit_encoders.lejepa import LeJepaCTEncoder

    write_dicom_series(tmp_path / "in" / "good", n=3)
    write_dicom_series(tmp_path / "in" / "lonely", n=1)
    (tmp_path / "in" / "broken.nii.gz").write_bytes(b"not a nifti")
    inputs = LeJepaCTEncoder.discover_inputs(tmp_path / "in")
    summary = run_embed(LeJepaCTEncoder(**tiny_options), inputs, tmp_path / "out", batch_size=2)
    assert summary.ok == ["good"]
    assert [name for name, _ in summary.failed] == ["broken.nii.gz", "lonely"]
    assert summary.failed[1][1].startswith("single-slice volume")
    assert read_embeddings(tmp_path / "out" / "good.npz").embeddings.shape == (3, 32)


def test_same_stem_twice_is_refused(tmp_path):
    a = make_embedding_inputs(tmp_path / "x", 1)[0]
    b = make_embedding_inputs(tmp_path / "y", 1)[0]
    with pytest.raises(ValueError, match=r"would both write valid_0_a_1\.npz"):
        run_embed(PrecomputedEncoder(), [a, b], tmp_path / "out")


def graftkit_embed(*args: str) -> subprocess.CompletedProcess:
    """``graftkit embed ARGS`` in a fresh process: the command line exactly as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "graftkit", "--quiet", "embed", *args],
        capture_output=True, text=True, timeout=300,
        env=os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def test_cli_embeds_with_the_precomputed_encoder_and_resumes(tmp_path):
    """End to end through the CLI (the progress wiring once broke every CLI run after one file)."""
    make_embedding_inputs(tmp_path / "in", 4)
    first = graftkit_embed(
        "precomputed", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")
    )
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.startswith("embedded 4, skipped 0 (complete), failed 0")
    assert sorted(os.listdir(tmp_path / "out")) == [f"valid_{i}_a_1.npz" for i in range(4)]
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    again = graftkit_embed(
        "precomputed", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")
    )
    assert again.returncode == 0 and again.stdout.startswith("embedded 0, skipped 4 (complete)")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == stamps


def test_cli_embeds_nifti_and_dicom_with_a_tiny_lejepa_and_resumes(tmp_path):
    """A tiny random ``lejepa-ct`` on two NIfTI volumes and one DICOM series, in-process through
    ``graftkit.cli.main`` (non-terminal output: plain progress lines), then a second invocation
    that finds every output complete."""
    from graftkit.cli import main

    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "valid_1_a_1.nii.gz", ct_phantom(4, seed=1))
    write_nifti(tmp_path / "in" / "valid_2_a_1.nii.gz", ct_phantom(3, seed=2))
    write_dicom_series(tmp_path / "in" / "valid_3_a_1", n=3)
    options = [
        f"--option={k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in TINY.items()
    ]
    argv = ["embed", "lejepa-ct", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--batch-size", "2", *options]  # fmt: skip
    assert main(argv) == 0
    shapes = {
        p.name: read_embeddings(p).embeddings.shape for p in sorted((tmp_path / "out").iterdir())
    }
    assert shapes == {
        "valid_1_a_1.npz": (4, 32),
        "valid_2_a_1.npz": (3, 32),
        "valid_3_a_1.npz": (3, 32),
    }
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    assert main(argv) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == stamps


@pytest.mark.distributed
def test_two_processes_embed_every_volume_exactly_once(tmp_path):
    """torchrun --nproc_per_node 2 (gloo): disjoint shards, union = all inputs, and every rank
    returns the whole run's summary."""
    inputs = make_embedding_inputs(tmp_path / "in", 7)
    wrong_dim = np.ones((2, 3), dtype=np.float32)  # fails on whichever rank gets it
    np.save(tmp_path / "in" / "valid_7_a_1.npy", wrong_dim)
    torchrun = shutil.which("torchrun") or pytest.skip("torchrun not found")
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(HERE / "embed_worker.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=os.environ | {"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode != 0, "a failed volume must give a non-zero exit code"
    calls = {r: (tmp_path / f"calls.{r}").read_text().split() for r in (0, 1)}
    assert set(calls[0]).isdisjoint(calls[1])
    assert sorted(calls[0] + calls[1]) == sorted([p.name for p in inputs] + ["valid_7_a_1.npy"])
    for r in (0, 1):
        ok, failed = (tmp_path / f"summary.{r}").read_text().split("|")
        assert sorted(ok.split()) == sorted(p.name for p in inputs) and failed == "valid_7_a_1.npy"
    assert sorted(os.listdir(tmp_path / "out")) == [f"valid_{i}_a_1.npz" for i in range(7)]


def test_cli_says_what_the_encoder_looks_for_when_a_folder_holds_none(tmp_path, capsys):
    """``graftkit embed`` takes its inputs from the encoder: a folder of CT volumes holds nothing
    for ``precomputed``, and the one-line error names what that encoder reads."""
    from graftkit.cli import main

    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "valid_1_a_1.nii.gz", ct_phantom(3, seed=1))
    argv = [
        "embed",
        "precomputed",
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("no inputs of encoder precomputed found (files ending .npy, .npz)"), err
    assert not (tmp_path / "o").exists()
