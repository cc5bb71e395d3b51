"""Bad input never crashes or lies: each case ends in one named line (exit 2) or a counted skip.

Table-driven over one tiny synthetic CT-RATE cohort. Three kinds of case:

- ``SKIPS``: a damaged volume is skipped by name with its reason, decided in the data scan;
  the other volumes stay usable (checked on the dataset, no model built);
- ``STOPS`` and ``ONE_LINERS``: the CLI prints one line naming the file or value, exit code 2,
  no traceback (in-process ``graftkit.cli.main``; every one stops before a model is built);
- one end-to-end ``graftkit run`` on a cohort holding every skip at once: the skips are in
  ``metrics.json`` with their reasons, the other volumes are trained and evaluated, and a later
  ``graftkit eval`` with other settings writes its own folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from graftkit_ct_rate import layout
from graftkit_ct_rate.dataset import CTRateDataset
from graftkit_ct_rate.synth import synthesize

from graftkit.cli import main
from graftkit.config import DataConfig

TINY = {"n_train": 16, "n_valid": 8, "dim": 16, "seed": 3, "verify_reports": 0}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reliability") / "cohort"
    synthesize(root, **TINY)
    return root


@pytest.fixture
def cohort(pristine, tmp_path) -> Path:
    return shutil.copytree(pristine, tmp_path / "cohort")


# -- damage helpers ----------------------------------------------------------------------------


def _csv(root: Path, kind: str, split: str) -> Path:
    return getattr(layout, f"{kind}_csv")(root, split)


def _edit(root: Path, kind: str, split: str, change: Callable[[pd.DataFrame], pd.DataFrame]):
    path = _csv(root, kind, split)
    change(pd.read_csv(path, keep_default_na=False)).to_csv(path, index=False)


def _name(root: Path, split: str, i: int) -> str:
    return str(pd.read_csv(_csv(root, "labels", split)).VolumeName[i])


def _embedding(root: Path, split: str, i: int) -> Path:
    return root / "embeddings" / f"{layout.volume_stem(_name(root, split, i))}.npy"


def duplicate_report_with_other_text(root):
    def change(df):
        row = df.iloc[[0]].copy()
        row["Findings_EN"] = "A different report for the same volume."
        return pd.concat([df, row])

    _edit(root, "reports", "train", change)
    return "train", 0, "duplicate: listed 2 times", "train_reports.csv"


def duplicate_label_row(root):
    _edit(root, "labels", "train", lambda df: pd.concat([df, df.iloc[[1]]]))
    return "train", 1, "duplicate: listed 2 times", "train_predicted_labels.csv"


def duplicate_metadata_with_other_spacing(root):
    def change(df):
        row = df.iloc[[2]].copy()
        row["ZSpacing"] = 7.5
        return pd.concat([df, row])

    _edit(root, "metadata", "train", change)
    return "train", 2, "bad metadata: ZSpacing", "7.5"


def empty_findings_train(root):
    def change(df):
        df.loc[3, "Findings_EN"] = ""
        return df

    _edit(root, "reports", "train", change)
    return "train", 3, "empty report:", "Findings_EN"


def whitespace_findings_valid(root):
    def change(df):
        df.loc[0, "Findings_EN"] = "   \t "
        return df

    _edit(root, "reports", "valid", change)
    return "valid", 0, "empty report:", "validation_reports.csv"


def implausible_zspacing(root):
    def change(df):
        df.loc[4, "ZSpacing"] = 1e9
        return df

    _edit(root, "metadata", "train", change)
    return "train", 4, "bad metadata: ZSpacing = 1e+09 mm", "(0, 20]"


def npz_positions_of_wrong_length(root):
    path = _embedding(root, "train", 5)
    array = np.load(path)
    path.unlink()
    np.savez(path.with_suffix(".npz"), embeddings=array, z_mm=np.arange(len(array) + 2.0))
    return "train", 5, "bad positions:", f"expected ({len(array)},)"


def npz_positions_with_nan(root):
    path = _embedding(root, "train", 6)
    array = np.load(path)
    path.unlink()
    z = np.arange(len(array), dtype=np.float32)
    z[1] = np.nan
    np.savez(path.with_suffix(".npz"), embeddings=array, z_mm=z)
    return "train", 6, "bad positions:", "NaN/Inf at slice 1"


def npz_without_embeddings(root):
    path = _embedding(root, "train", 7)
    array = np.load(path)
    path.unlink()
    np.savez(path.with_suffix(".npz"), slices=array)
    return "train", 7, "unreadable embedding:", "keys: ['slices']"


def volume_name_escaping_the_folder(root):
    old = _name(root, "train", 8)
    new = "../../" + old
    shutil.copy(_embedding(root, "train", 8), root.parent / f"{layout.volume_stem(old)}.npy")
    for kind in ("reports", "labels"):
        _edit(root, kind, "train", lambda df: df.replace({"VolumeName": {old: new}}))
    return "train", 8, "bad name:", "outside the embeddings folder"


SKIPS = [
    duplicate_report_with_other_text,
    duplicate_label_row,
    duplicate_metadata_with_other_spacing,
    empty_findings_train,
    whitespace_findings_valid,
    implausible_zspacing,
    npz_positions_of_wrong_length,
    npz_positions_with_nan,
    npz_without_embeddings,
    volume_name_escaping_the_folder,
]


def scan(root: Path, tmp_path: Path) -> CTRateDataset:
    ds = CTRateDataset(DataConfig(data_dir=root), tmp_path / "work")
    for split in ds.splits:
        ds.records(split)
    return ds


@pytest.mark.parametrize("damage", SKIPS, ids=lambda f: f.__name__)
def test_damaged_volume_is_skipped_by_name_with_its_reason(cohort, tmp_path, damage):
    split, index, reason, detail = damage(cohort)
    name = _name(cohort, split, index)
    ds = scan(cohort, tmp_path)
    skipped = {(s, n): r for s, n, r in ds.skips.entries}
    assert list(skipped) == [(split, name)], skipped  # that volume, once, and nothing else
    assert skipped[split, name].startswith(reason) and detail in skipped[split, name]
    used = {v.name for s in ds.splits for v in ds.records(s)}
    assert name not in used
    assert len(used) == TINY["n_train"] + TINY["n_valid"] - 1


def test_quiet_gaps_are_recorded_as_warnings(cohort, tmp_path):
    """A missing ZSpacing (1 mm fallback) and an embedding file no CSV lists are both warnings."""
    _edit(cohort, "metadata", "valid", lambda df: df.drop(index=[1]))
    stray = cohort / "embeddings" / "train_999_a_1.npy"
    np.save(stray, np.zeros((4, 16), np.float16))
    with pytest.warns(UserWarning, match=_name(cohort, "valid", 1)):
        ds = scan(cohort, tmp_path)
    assert ds.skips.entries == []
    assert any("1 mm per slice" in w and _name(cohort, "valid", 1) in w for w in ds.warnings)
    assert any(w.startswith("1 embedding file(s)") and stray.name in w for w in ds.warnings)


def test_a_file_that_fails_after_the_scan_is_skipped_at_load_in_training(cohort, tmp_path):
    from graftkit.data import DataError, Skipped, VolumeDataset, collate_volumes

    ds = scan(cohort, tmp_path)
    volumes = ds.records("train")[:3]
    path = Path(volumes[1].meta["embedding"])
    array = np.load(path)
    array[0, 0] = np.nan
    np.save(path, array)
    items = [VolumeDataset(ds, volumes, skip_unloadable=True)[i] for i in range(3)]
    assert isinstance(items[1], Skipped) and items[1].name == volumes[1].name
    batch = collate_volumes(items)
    assert batch["index"].tolist() == [0, 2]
    assert ds.skips.entries[-1][1] == volumes[1].name
    assert str(path) in ds.skips.entries[-1][2]
    with pytest.raises(DataError, match=path.stem):  # evaluation must score every volume
        VolumeDataset(ds, volumes)[1]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_load_time_skips_in_loader_workers_reach_the_training_process(
    cohort, tmp_path, num_workers
):
    """A DataLoader worker process has its own copy of ``dataset.skips``: the batches carry the
    skips back, and the training loop records them (and drops a batch with no volume left)."""
    from graftkit.curriculum.batches import PhaseCollator, loaded, make_loader

    ds = scan(cohort, tmp_path)
    volumes = ds.records("train")[:5]
    broken = {1, 3, 4}
    for i in broken:
        path = Path(volumes[i].meta["embedding"])
        array = np.load(path)
        array[0, 0] = np.inf
        np.save(path, array)
    collator = PhaseCollator(ds, volumes, None, None, "positive_findings", 4, seed=0)
    loader = make_loader(
        ds, volumes, collator, batch_size=2, shuffle=False, seed=0, epoch=0,
        num_workers=num_workers,
    )  # fmt: skip
    batches = [loaded(ds, batch) for batch in loader]  # volumes [0, 1], [2, 3], [4]
    assert [b["index"].tolist() if b is not None else None for b in batches] == [[0], [2], None]
    assert all("skipped" not in b for b in batches if b is not None)
    recorded = {name: reason for _, name, reason in ds.skips.entries}
    assert set(recorded) == {volumes[i].name for i in broken}
    for i in broken:
        assert Path(volumes[i].meta["embedding"]).name in recorded[volumes[i].name]


# -- one line, exit code 2 ------------------------------------------------------------------------


def non_utf8_byte_in_reports(root):
    path = _csv(root, "reports", "train")
    data = path.read_bytes()
    cut = data.index(b"\n", data.index(b"\n") + 1) + 20  # inside the second data row
    path.write_bytes(data[:cut] + b"\xff" + data[cut:])
    return "train_reports.csv", "not UTF-8: byte 0xff"


def label_column_missing(root):
    _edit(root, "labels", "train", lambda df: df.drop(columns=["Cardiomegaly"]))
    return "train_predicted_labels.csv", "missing column(s): Cardiomegaly"


def volume_name_column_missing(root):
    _edit(root, "reports", "train", lambda df: df.drop(columns=["VolumeName"]))
    return "train_reports.csv", "missing column(s): VolumeName"


def reports_file_absent(root):
    _csv(root, "reports", "train").unlink()
    return "train_reports.csv", "not found"


def reports_file_empty(root):
    _csv(root, "reports", "valid").write_bytes(b"")
    return "validation_reports.csv", "is empty"


STOPS = [
    non_utf8_byte_in_reports,
    label_column_missing,
    volume_name_column_missing,
    reports_file_absent,
    reports_file_empty,
]


def one_line_error(capsys, argv: list[str], *expected: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("graftkit ")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in "\n".join(err), err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("damage", STOPS, ids=lambda f: f.__name__)
def test_structural_csv_errors_are_one_line(cohort, tmp_path, capsys, damage):
    filename, message = damage(cohort)
    argv = ["--quiet", "run", "ct_rate", "--profile", "smoke", "--data-dir", str(cohort)]
    one_line_error(capsys, [*argv, "--output-dir", str(tmp_path / "run")], filename, message)


@pytest.fixture(scope="module")
def saved_run(pristine, tmp_path_factory) -> Path:
    """A run directory holding only the resolved smoke config (enough for the checks before
    a model is built)."""
    from graftkit.config.layers import resolve_config

    run_dir = tmp_path_factory.mktemp("saved") / "run"
    data = [("--data-dir", {"data.data_dir": str(pristine)})]
    cfg, _ = resolve_config("ct_rate", profile="smoke", flags=data)
    cfg.model_copy(update={"output_dir": run_dir}).save(run_dir / "config.yaml")
    return run_dir


@pytest.fixture
def files(tmp_path) -> Path:
    """Small input files the one-line cases point at."""
    (tmp_path / "afile").write_text("x")
    np.save(tmp_path / "empty.npy", np.zeros((0, 16), np.float32))
    np.savez(tmp_path / "nokey.npz", slices=np.zeros((3, 16), np.float32))
    (tmp_path / "latin1.csv").write_bytes(b"id,text\n1,caf\xe9 ok\n")
    (tmp_path / "good.csv").write_text("id,text\n1,Cardiomegaly.\n")
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        np.save(tmp_path / folder / "a.npy", np.zeros((3, 4), np.float32))
    return tmp_path


RUN = ["run", "ct_rate", "--profile", "smoke", "--data-dir", "{data}"]
LABEL = ["label", "--text-column", "text", "--output", "{tmp}/o.csv", "--extractor"]

#: (case, argv with {tmp}/{run}/{data} placeholders, substrings of the one error line)
ONE_LINERS = [
    ("output dir under a file", [*RUN, "--output-dir", "{tmp}/afile/run"], ("{tmp}/afile/run",)),
    ("unknown --set key", [*RUN, "--set", "phases.p3.lrr=1"], ("did you mean", "phases.p3.lr")),
    (
        "resume with another config",
        [*RUN, "--output-dir", "{run}", "--resume", "--set", "seed=7", "--set", "phases.p3.lr=0.05"],
        ("{run}/config.yaml", "seed: 0 -> 7", "phases.p3.lr: 0.002 -> 0.05"),
    ),
    (
        "resume allowing a key that is not safe to change",
        [*RUN, "--output-dir", "{run}", "--resume", "--set", "phases.p3.lr=0.05",
         "--allow-config-change", "phases.p3.lr"],
        ("--allow-config-change phases.p3.lr", "eval.*"),
    ),
    ("eval on a split the dataset lacks", ["eval", "{run}", "--split", "test"],
     ("--split test", "['train', 'valid']")),
    ("generate with N=0", ["generate", "{run}", "--embeddings", "{tmp}/empty.npy"],
     ("{tmp}/empty.npy", "hold no slice")),
    ("generate with an npz without embeddings", ["generate", "{run}", "--embeddings", "{tmp}/nokey.npz"],
     ("{tmp}/nokey.npz", "keys: ['slices']")),
    ("synth into a non-empty folder", ["synth", "ct_rate", "--output", "{data}"],
     ("{data}", "not an empty folder")),
    ("label a non-UTF-8 file", [*LABEL, "ct_rate-rules", "--input", "{tmp}/latin1.csv"],
     ("{tmp}/latin1.csv", "byte 0xe9", "line 2")),
    ("label --output naming a folder", [*LABEL, "ct_rate-rules", "--input", "{tmp}/good.csv", "--output", "{tmp}/x"],
     ("{tmp}/x", "is a directory")),
    ("label --output under a file", [*LABEL, "ct_rate-rules", "--input", "{tmp}/good.csv", "--output", "{tmp}/afile/o.csv"],
     ("{tmp}/afile", "cannot create")),
    ("radbert without model_dir", [*LABEL, "ct_rate-radbert", "--input", "{tmp}/good.csv"], ("model_dir",)),
    ("radbert with a bad model_dir",
     [*LABEL, "ct_rate-radbert", "--input", "{tmp}/good.csv", "--option", "model_dir={tmp}/nowhere"],
     ("{tmp}/nowhere", "not a directory")),
    ("embed a missing input", ["embed", "precomputed", "--input", "{tmp}/nowhere", "--output", "{tmp}/emb"],
     ("{tmp}/nowhere",)),
    ("embed two inputs with one stem",
     ["embed", "precomputed", "--input", "{tmp}/x", "{tmp}/y", "--output", "{tmp}/emb"],
     ("a.npz", "rename one")),
]  # fmt: skip


@pytest.mark.parametrize(("case", "argv", "expected"), ONE_LINERS, ids=[c[0] for c in ONE_LINERS])
def test_user_errors_are_one_line_with_exit_code_2(
    capsys, files, saved_run, pristine, case, argv, expected
):
    places = {"tmp": str(files), "run": str(saved_run), "data": str(pristine)}
    one_line_error(
        capsys,
        ["--quiet", *(a.format(**places) for a in argv)],
        *(e.format(**places) for e in expected),
    )
    assert not (files / "o.csv").exists()
    assert not list(files.glob("*.tmp*")) and not list(files.glob(".*.tmp*"))


def test_debug_shows_the_traceback(capsys, files, saved_run):
    with pytest.raises(Exception, match="hold no slice"):
        main(["--debug", "generate", str(saved_run), "--embeddings", str(files / "empty.npy")])


def test_label_input_quirks_are_handled(files, capsys):
    """A UTF-8 BOM keeps the first column's name; a field over csv's 131,072-character limit."""
    long = "Cardiomegaly. " + "x" * 140_000
    (files / "bom.csv").write_bytes(("\ufeffid,text\n1,Cardiomegaly.\n2," + long + "\n").encode())
    argv = ["--quiet", "label", "--extractor", "ct_rate-rules", "--text-column", "text"]
    code = main(
        [*argv, "--input", str(files / "bom.csv"), "--output", str(files / "out" / "o.csv")]
    )
    assert code == 0, capsys.readouterr().err
    out = pd.read_csv(files / "out" / "o.csv")
    assert list(out.columns[:2]) == ["id", "Medical material"]
    assert out.id.tolist() == [1, 2] and out.Cardiomegaly.tolist() == [1, 1]
    assert sorted(p.name for p in (files / "out").iterdir()) == ["o.csv"]


def test_resume_allows_only_named_safe_changes(saved_run):
    from graftkit.config import ConfigError, load_yaml
    from graftkit.config.layers import resolve_config
    from graftkit.curriculum.resume import check_resume_config
    from graftkit.rundir import RunDir

    rundir = RunDir(saved_run)
    data = [("--data-dir", {"data.data_dir": load_yaml(rundir.config)["data"]["data_dir"]})]
    cfg, _ = resolve_config("ct_rate", profile="smoke", overrides=["eval.limit=3"], flags=data)
    with pytest.raises(ConfigError, match=r"eval\.limit: None -> 3"):
        check_resume_config(cfg, rundir, [])
    assert check_resume_config(cfg, rundir, ["eval.*"]) == {"eval.limit": [None, 3]}
    same, _ = resolve_config("ct_rate", profile="smoke", flags=data)
    assert check_resume_config(same, rundir, []) == {}


# -- end to end: every skip at once, then evaluations that must not overwrite the run --------------


def damaged_run_argv(data: Path, run_dir: Path) -> list[str]:
    return [
        "--quiet", "run", "ct_rate", "--profile", "smoke", "--data-dir", str(data),
        "--output-dir", str(run_dir), "--phases", "1", "--set", "eval.ablations=false",
        "--set", f"data.cache_dir={run_dir.parent / 'cache'}",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def damaged_run(pristine, tmp_path_factory):
    """``graftkit run`` (phase 1, then eval) on a cohort holding every damage of ``SKIPS``.

    In-process (``graftkit.cli.main``) to spare a second torch import; the exit code and
    stderr are what the command line would give.
    """
    base = tmp_path_factory.mktemp("damaged")
    data = shutil.copytree(pristine, base / "cohort")
    expected = [damage(data) for damage in SKIPS]
    _edit(data, "metadata", "valid", lambda df: df.drop(index=[2]))  # 1 mm fallback
    np.save(data / "embeddings" / "train_999_a_1.npy", np.zeros((4, 16), np.float16))
    run_dir = base / "run"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(damaged_run_argv(data, run_dir))
    return run_dir, data, code, stderr.getvalue(), expected


def test_every_skip_is_counted_and_the_other_volumes_are_trained_and_evaluated(damaged_run):
    run_dir, data, code, stderr, expected = damaged_run
    assert code == 0, stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    d = metrics["data"]
    skipped = {(item["split"], item["name"]): item["reason"] for item in d["items"]}
    assert d["skipped"] == len(SKIPS) == len(skipped)
    for split, index, reason, detail in expected:
        name = _name(data, split, index)
        assert skipped[split, name].startswith(reason) and detail in skipped[split, name]
    n_train = TINY["n_train"] - sum(e[0] == "train" for e in expected)
    n_valid = TINY["n_valid"] - sum(e[0] == "valid" for e in expected)
    assert (d["train"], d["valid"]) == (n_train, n_valid)
    assert any("1 mm per slice" in w for w in d["warnings"])
    assert any("train_999_a_1.npy" in w for w in d["warnings"])
    assert metrics["eval"]["volumes"] == n_valid
    assert metrics["eval"]["checkpoint"] == {
        "path": "phase1",
        "phase": 1,
        "epochs_run": 1,
        "epoch": 1,
    }
    assert metrics["timing"]["total_seconds"] > 0
    assert len((run_dir / "generations.jsonl").read_text().splitlines()) == n_valid


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {
        name: (run_dir / name).read_bytes()
        for name in ("metrics.json", "generations.jsonl", "report.html", "config.yaml")
    }


def test_another_evaluation_writes_its_own_folder(damaged_run, capsys):
    run_dir = damaged_run[0]
    before = _snapshot(run_dir)
    assert main(["--quiet", "eval", str(run_dir), "--limit", "2"]) == 0
    folder = run_dir / "eval" / "limit2"
    assert _snapshot(run_dir) == before  # the run's own results are untouched
    result = json.loads((folder / "metrics.json").read_text())
    assert result["eval"]["volumes"] == 2 and result["eval"]["checkpoint"]["phase"] == 1
    assert len((folder / "generations.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    one_line_error(
        capsys, ["--quiet", "eval", str(run_dir), "--limit", "2"], str(folder), "--overwrite"
    )
    assert (
        main(["--quiet", "eval", str(run_dir), "--limit", "1", "--name", "limit2", "--overwrite"])
        == 0
    )
    assert json.loads((folder / "metrics.json").read_text())["eval"]["volumes"] == 1
    assert _snapshot(run_dir) == before


def test_eval_of_a_run_killed_mid_phase_names_the_checkpoint(damaged_run, tmp_path, capsys):
    run_dir = shutil.copytree(damaged_run[0], tmp_path / "run")
    (run_dir / "checkpoints" / "phase2" / "last").mkdir(parents=True)  # phase 2 started, no end
    before = _snapshot(run_dir)
    assert main(["eval", str(run_dir), "--limit", "1"]) == 0
    err = capsys.readouterr().err
    assert "incomplete" in err and "phase1 (phase 1, best epoch 1 of 1 run)" in err
    metrics = json.loads((run_dir / "eval" / "phase1-limit1" / "metrics.json").read_text())
    assert metrics["eval"]["checkpoint"]["run_incomplete"].startswith("phase(s) [2]")
    assert _snapshot(run_dir) == before


def test_resume_refuses_a_forged_checkpoint_naming_it(damaged_run, tmp_path, capsys, monkeypatch):
    import hashlib

    run_dir = shutil.copytree(damaged_run[0], tmp_path / "run")
    shutil.rmtree(run_dir / "phase1")
    last = run_dir / "checkpoints" / "phase1" / "last"
    state = json.loads((last / "state.json").read_text())
    state["optimizer"]["__dict__"][1][1] = {"__list__": []}  # no parameter groups
    (last / "state.json").write_text(json.dumps(state))
    manifest = json.loads((last / "manifest.json").read_text())
    manifest["files"]["state.json"] = hashlib.sha256((last / "state.json").read_bytes()).hexdigest()
    (last / "manifest.json").write_text(json.dumps(manifest))
    argv = damaged_run_argv(damaged_run[1], damaged_run[0])
    argv[argv.index("--output-dir") + 1] = str(run_dir)
    one_line_error(capsys, [*argv, "--resume"], str(last), "does not fit this run", "refusing")


def test_a_forged_safetensors_header_is_refused_naming_the_file(tmp_path):
    import hashlib

    import torch

    from graftkit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    ckpt = save_checkpoint(tmp_path / "ck", {"model": {"w": torch.ones(2, 3)}}, {"phase": 1})
    raw = (ckpt / "model.safetensors").read_bytes()
    forged = raw.replace(b"[2,3]", b"[9,9]")  # header altered ...
    assert forged != raw
    (ckpt / "model.safetensors").write_bytes(forged)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = hashlib.sha256(forged).hexdigest()  # ... and re-summed
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors"):
        load_checkpoint(ckpt)


def test_resume_records_an_allowed_change_and_says_it_rebuilds_a_corrupted_phase(
    damaged_run, tmp_path, capsys
):
    from graftkit.config import load_yaml

    run_dir = shutil.copytree(damaged_run[0], tmp_path / "run")
    weights = run_dir / "phase1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    argv = damaged_run_argv(damaged_run[1], damaged_run[0])[1:]  # not --quiet: the echo matters
    argv[argv.index("--output-dir") + 1] = str(run_dir)
    argv += ["--resume", "--set", "eval.limit=2", "--allow-config-change", "eval.*"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"resume: checkpoint {run_dir / 'phase1'} is corrupted" in out
    assert "phase 1 is run again from checkpoints/phase1/last" in out
    events = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert events[-1] == {
        "phase": 1,
        "event": "config_change",
        "changes": {"eval.limit": [None, 2]},
    }
    assert load_yaml(run_dir / "config.yaml")["eval"]["limit"] == 2
    assert json.loads((run_dir / "metrics.json").read_text())["eval"]["volumes"] == 2


def test_rewriting_the_runs_own_evaluation_leaves_nothing_of_the_old_one(tmp_path):
    """Before the run's own evaluation is written again (e.g. after ``--resume
    --allow-config-change eval.ablations``), the earlier one is removed, not merged into."""
    from graftkit.rundir import RunDir

    metrics = {"data": {"train": 3}, "phases": {"1": {}}, "eval": {"macro_f1": 0.2}}
    metrics |= {"ablation": {"zero_drop": 0.5}, "probe": {}, "classifier": {}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    for name in ("generations.jsonl", "grounding.json", "history.jsonl"):
        (tmp_path / name).write_text("{}\n")
    RunDir(tmp_path).clear()
    assert json.loads((tmp_path / "metrics.json").read_text()) == {
        "data": {"train": 3},
        "phases": {"1": {}},
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.jsonl", "metrics.json"]
