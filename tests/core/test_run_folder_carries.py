"""A run folder carries what reopening the run needs (graftkit.curriculum.carry): a copy of the
language prior, the fingerprint of an --llm, copies of the files the dataset trained. Reopening
under another GRAFTKIT_CACHE trains nothing; a copy that is missing or altered is one line."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest

from graftkit.config import build_config
from graftkit.curriculum import carry
from graftkit.data import GraftDataset
from graftkit.lm.prior import prior_cache_key, prior_key
from graftkit.rundir import RunDir, RunDirError

#: sha256 of b"abc", the FIPS 180-2 example (appendix B.1).
SHA256_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

PRIOR = {
    "model.prior.vocab_size": 300,
    "model.prior.hidden_size": 16,
    "model.prior.intermediate_size": 32,
    "model.prior.num_hidden_layers": 1,
    "model.prior.num_attention_heads": 2,
    "model.prior.num_key_value_heads": 1,
    "model.prior.max_position_embeddings": 64,
    "model.prior.max_length": 32,
    "model.prior.steps": 2,
    "model.prior.batch_size": 2,
}
ACCELERATOR = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)


class TrainedFiles(GraftDataset):
    """A dataset whose prepare() 'trains' one file into its work folder."""

    name: ClassVar[str] = "trained-files"
    trained = 0

    def __init__(self, config, workdir):
        super().__init__(config, workdir)
        self.weights: Path | None = None

    def prepare(self, progress=None):
        if self.weights is None:
            self.weights = self.workdir / "encoder.bin"
            self.weights.parent.mkdir(parents=True, exist_ok=True)
            self.weights.write_bytes(b"abc")
            TrainedFiles.trained += 1

    def run_files(self):
        return {"encoder.bin": self.weights}

    def use_run_files(self, files):
        self.weights = files["encoder.bin"]

    def corpus(self, kinds=("narrative",)):
        return [f"Report {i}: a loop at the top, a bar in row {i % 8}." for i in range(40)]

    embedding_dim = 4
    records = load = condition_texts = class_text = None  # not used here


def _cfg(**overrides):
    return build_config("ct_rate", overrides={**PRIOR, **overrides})


def test_dataset_files_are_copied_with_their_sha256_and_handed_back(tmp_path):
    cfg, rundir = _cfg(), RunDir(tmp_path / "run")
    first = TrainedFiles(cfg.data, tmp_path / "cache-a")
    assert carry.hand_back_dataset_files(cfg, rundir, first) == {}  # a new run folder
    first.prepare()
    carry.carry_dataset_files(cfg, rundir, first, {})
    manifest = json.loads((rundir.dataset_files / carry.FILES_MANIFEST).read_text())
    assert manifest["files"] == {"encoder.bin": {"sha256": SHA256_ABC, "bytes": 3}}
    assert manifest["dataset"] == "ct_rate" and "cache_dir" not in manifest["data"]

    # reopened under another cache: the run's copy is handed back, nothing is trained
    TrainedFiles.trained = 0
    again = TrainedFiles(cfg.data, tmp_path / "cache-b")
    handed = carry.hand_back_dataset_files(cfg, rundir, again)
    again.prepare()
    assert handed == {"encoder.bin": rundir.dataset_files / "encoder.bin"}
    assert again.weights == rundir.dataset_files / "encoder.bin" and TrainedFiles.trained == 0
    assert not (tmp_path / "cache-b").exists()

    # the folder reused with other data settings: the dataset makes its own files
    other = _cfg(**{"data.limit_train": 7})
    assert carry.hand_back_dataset_files(other, rundir, TrainedFiles(other.data, tmp_path)) == {}


def test_a_missing_or_altered_copy_is_refused_naming_it(tmp_path):
    cfg, rundir = _cfg(), RunDir(tmp_path / "run")
    dataset = TrainedFiles(cfg.data, tmp_path / "cache")
    dataset.prepare()
    carry.carry_dataset_files(cfg, rundir, dataset, {})
    copy = rundir.dataset_files / "encoder.bin"
    copy.write_bytes(b"abd")
    with pytest.raises(RunDirError, match=r"encoder\.bin: altered since the run"):
        carry.hand_back_dataset_files(cfg, rundir, TrainedFiles(cfg.data, tmp_path))
    copy.unlink()
    with pytest.raises(RunDirError, match=r"encoder\.bin: missing; .* would train it again"):
        carry.hand_back_dataset_files(cfg, rundir, TrainedFiles(cfg.data, tmp_path))


def test_a_dataset_naming_files_must_take_them_back_and_name_them_plainly(tmp_path):
    class Forgetful(TrainedFiles):
        use_run_files = GraftDataset.use_run_files

    with pytest.raises(NotImplementedError, match="does not implement use_run_files"):
        Forgetful(_cfg().data, tmp_path).use_run_files({})

    class Nested(TrainedFiles):
        def run_files(self):
            return {"sub/encoder.bin": self.weights}

    nested = Nested(_cfg().data, tmp_path / "cache")
    nested.prepare()
    with pytest.raises(ValueError, match="must be a plain file name"):
        carry.carry_dataset_files(_cfg(), RunDir(tmp_path / "run"), nested, {})


def test_the_prior_is_copied_into_the_run_and_reopened_from_it(tmp_path, capsys):
    cfg, rundir = _cfg(), RunDir(tmp_path / "run")
    dataset = TrainedFiles(cfg.data, tmp_path)
    cache_a = tmp_path / "cache-a" / "prior"
    built = carry.language_model(cfg, rundir, dataset, ACCELERATOR, cache_a)
    key = prior_cache_key(dataset.corpus(), cfg.model.prior)
    assert built == cache_a / f"prior-{key[:16]}"
    assert prior_key(rundir.prior) == key  # the run's own copy, complete
    assert sorted(p.name for p in rundir.prior.iterdir()) == sorted(p.name for p in built.iterdir())

    # reopened (eval, generate) or resumed under another cache: the copy, nothing built
    cache_b = tmp_path / "cache-b" / "prior"
    for record in (False, True):
        used = carry.language_model(cfg, rundir, dataset, ACCELERATOR, cache_b, record=record)
        assert used == rundir.prior and not cache_b.exists()

    # a run with another prior config into the same folder replaces the copy
    other = _cfg(**{"model.prior.steps": 3})
    carry.language_model(other, rundir, dataset, ACCELERATOR, cache_b)
    assert prior_key(rundir.prior) == prior_cache_key(dataset.corpus(), other.model.prior)

    # a folder made before graftkit kept the copy: reopened from the cache, with a warning
    legacy = RunDir(tmp_path / "legacy")
    used = carry.language_model(cfg, legacy, dataset, ACCELERATOR, cache_a, record=False)
    assert used == built and not legacy.prior.exists()
    assert "holds no copy of its language prior" in capsys.readouterr().out


def test_an_llm_is_fingerprinted_and_reopened_only_unchanged(tmp_path):
    llm = tmp_path / "llm"
    llm.mkdir()
    (llm / "config.json").write_text('{"model_type": "llama"}')
    (llm / "model.safetensors").write_bytes(b"abc")
    cfg, rundir = _cfg(**{"model.llm": str(llm)}), RunDir(tmp_path / "run")
    assert carry.language_model(cfg, rundir, None, ACCELERATOR, tmp_path / "cache") == llm
    pin = json.loads(rundir.llm_fingerprint.read_text())
    assert pin["fingerprint"]["model.safetensors"] == f"sha256:{SHA256_ABC}"
    assert carry.language_model(cfg, rundir, None, ACCELERATOR, tmp_path, record=False) == llm

    (llm / "config.json").write_text('{"model_type": "llama", "hidden_size": 8}')
    with pytest.raises(RunDirError, match=r"not the LLM this run was trained on .*config\.json"):
        carry.language_model(cfg, rundir, None, ACCELERATOR, tmp_path, record=False)
    (llm / "config.json").unlink()
    with pytest.raises(
        RunDirError, match=r"model\.llm .* \(no config\.json\); the run was trained"
    ):
        carry.language_model(cfg, rundir, None, ACCELERATOR, tmp_path, record=False)
