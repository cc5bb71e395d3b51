"""The built-in ``hf`` dataset and the ``hf-keywords`` extractor, on datasets built in the test."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from typing import ClassVar

import numpy as np
import pytest
import torch
from hf_tables import CLASSES, COLUMNS, DIM, PLANTED_TRAIN, PLANTED_VALID, planted, rows, save

from graftkit import plugins
from graftkit.config import ConfigError, DataConfig, EvalConfig
from graftkit.data import DataError
from graftkit.datasets.hf import HFDataset
from graftkit.datasets.keywords import KeywordExtractor
from graftkit.hookspecs import hookimpl
from graftkit.labels import LabelExtractor, evaluation_extractor


def open_hf(tmp_path, path, **options):
    """An ``hf`` dataset over ``path`` with the columns of :mod:`hf_tables` and ``options``."""
    config = DataConfig(options={"path": str(path), **COLUMNS, **options})
    return HFDataset(config, tmp_path / "work")


# -- reading and skipping -------------------------------------------------------------------------
def test_saved_dataset_is_read_and_every_planted_row_is_skipped_with_its_reason(tmp_path, saved):
    ds = open_hf(tmp_path, saved)
    train, valid = ds.records("train"), ds.records("valid")
    assert (len(train), len(valid)) == (48, 16)  # the good rows hf_tables.rows wrote
    summary = ds.skips.summary()
    assert summary["by_reason"] == {**PLANTED_TRAIN, **PLANTED_VALID}
    reasons = {item["name"]: item["reason"] for item in summary["items"]}
    assert reasons["bad-label"] == "bad labels: cardiomegaly = 2, expected 0 or 1"
    assert reasons["bad-width"] == f"wrong d: d = {DIM - 4}, expected {DIM}"
    assert reasons["bad-nan"] == "non-finite embedding: NaN/Inf in slice 1"
    assert reasons["twice"] == "duplicate: id 'twice' is in 2 rows"
    assert reasons["bad-report"] == "empty report: report is empty"
    assert reasons["bad-z"].startswith("bad positions: z_mm has shape (2,)")
    assert ds.warnings == []  # positions_column given and filled
    assert ds.class_names == CLASSES and ds.embedding_dim == DIM
    assert [v.name for v in valid] == [f"v{i:03d}" for i in range(16)]


def test_load_returns_the_rows_embeddings_and_positions(tmp_path, saved):
    ds = open_hf(tmp_path, saved)
    volume = ds.records("train")[5]
    expected = rows(48, 0, "t")  # the same seed rebuilds the same table
    slices, z_mm = ds.load(volume)
    assert slices.dtype == torch.float32 and z_mm.dtype == torch.float32
    assert torch.allclose(slices, torch.tensor(expected["embeddings"][5]))
    assert z_mm.tolist() == [2.5 * i for i in range(slices.shape[0])]
    assert volume.labels.tolist() == [expected[c][5] for c in CLASSES]


def test_parquet_file_with_a_held_out_fraction(tmp_path):
    import datasets

    datasets.disable_progress_bars()
    train, _ = planted()
    datasets.Dataset.from_dict(train).to_parquet(str(tmp_path / "all.parquet"))
    ds = open_hf(tmp_path, tmp_path / "all.parquet", valid_fraction=0.5)
    # 54 rows (48 good + 6 planted, two of them one duplicated id): 27 held out, 27 kept
    names = [v.name for v in ds.records("train")], [v.name for v in ds.records("valid")]
    assert not set(names[0]) & set(names[1])
    assert len(names[0]) + len(names[1]) == 48  # the good rows, wherever they fell
    skipped = {item["name"] for item in ds.skips.summary()["items"]}
    assert skipped == {"bad-nan", "bad-report", "bad-label", "bad-width", "twice"}
    again = open_hf(tmp_path, tmp_path / "all.parquet", valid_fraction=0.5)
    assert [v.name for v in again.records("valid")] == names[1]  # split_seed 0 both times
    other = open_hf(tmp_path, tmp_path / "all.parquet", valid_fraction=0.5, split_seed=1)
    assert [v.name for v in other.records("valid")] != names[1]


def test_a_folder_of_parquet_files_is_read_by_load_dataset(tmp_path):
    import datasets

    datasets.disable_progress_bars()
    train, valid = planted()
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_dict(train).to_parquet(str(tmp_path / "data" / "train.parquet"))
    datasets.Dataset.from_dict(valid).to_parquet(str(tmp_path / "data" / "validation.parquet"))
    ds = open_hf(tmp_path, tmp_path / "data")
    assert (len(ds.records("train")), len(ds.records("valid"))) == (48, 16)
    assert ds.skips.summary()["by_reason"] == {**PLANTED_TRAIN, **PLANTED_VALID}


def test_ragged_and_empty_cells_are_skipped_and_tokens_take_token_0(tmp_path):
    table = rows(3, 0, "r")
    table["embeddings"][1] = [[1.0] * DIM, [1.0] * (DIM - 1)]  # rows of different lengths
    table["embeddings"][2] = None
    folder = save(tmp_path / "ragged", train=table, validation=rows(2, 1, "v"))
    ds = open_hf(tmp_path, folder)
    assert [v.name for v in ds.records("train")] == ["r000"]
    reasons = {i["name"]: i["reason"] for i in ds.skips.summary()["items"]}
    assert reasons == {
        "r001": "bad shape: its rows have different lengths",
        "r002": "missing embedding: embeddings is empty",
    }
    # [N, T, d] rows (a column nested three deep): token 0 of each slice
    tokens = rows(2, 0, "k")
    tokens["embeddings"] = [
        np.arange(5 * 3 * DIM, dtype=np.float32).reshape(5, 3, DIM).tolist(),
        np.ones((4, 3, DIM)).tolist(),
    ]
    tokens["z_mm"] = [[0.0, 1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0]]
    folder = save(tmp_path / "tokens", train=tokens, validation=tokens)
    ds = open_hf(tmp_path, folder)
    slices, z_mm = ds.load(ds.records("train")[0])
    assert slices.shape == (5, DIM) and z_mm.shape == (5,)
    assert slices[1, 0].item() == 1 * 3 * DIM  # element [1, 0, 0] of the arange
    assert slices[1, 1].item() == 1 * 3 * DIM + 1


def test_npy_paths_relative_to_the_dataset_folder(tmp_path):
    folder = tmp_path / "npy"
    (folder / "emb").mkdir(parents=True)
    table = rows(3, 0, "p")
    paths = []
    for i, emb in enumerate(table.pop("embeddings")):
        np.save(folder / "emb" / f"{i}.npy", np.asarray(emb, dtype=np.float32))
        paths.append(f"emb/{i}.npy")
    paths[2] = "emb/absent.npy"
    table["path"] = paths
    save(folder, train=table, validation=rows(1, 1, "v") | {"path": ["emb/0.npy"]})
    options = {**COLUMNS, "embeddings_column": None, "embeddings_path_column": "path"}
    ds = HFDataset(DataConfig(options={"path": str(folder), **options}), tmp_path / "work")
    volumes = ds.records("train")
    assert [v.name for v in volumes] == ["p000", "p001"]
    assert ds.skips.summary()["items"][0]["reason"] == (
        f"missing embedding: no file {folder / 'emb' / 'absent.npy'}"
    )
    slices, _ = ds.load(volumes[1])
    assert np.allclose(slices.numpy(), np.load(folder / "emb" / "1.npy"))


def test_no_positions_column_falls_back_to_the_slice_index_with_one_warning(tmp_path, saved):
    ds = open_hf(tmp_path, saved, positions_column=None)
    with pytest.warns(UserWarning, match="slice index"):
        train, valid = ds.records("train"), ds.records("valid")
    assert len(ds.warnings) == 1 and "slice index" in ds.warnings[0]
    slices, z_mm = ds.load(train[0])
    assert z_mm.tolist() == list(range(slices.shape[0]))
    assert len(valid) == 17  # bad-z's positions are not read: it is usable


def test_limits_cap_the_usable_rows(tmp_path, saved):
    config = DataConfig(options={"path": str(saved), **COLUMNS}, limit_train=10, limit_valid=3)
    ds = HFDataset(config, tmp_path / "work")
    assert (len(ds.records("train")), len(ds.records("valid"))) == (10, 3)


# -- options and whole-dataset errors -------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"report_colum": "report"}, "unknown option data.options.report_colum; did you mean"),
        ({"report_column": None}, "data.options.report_column = None"),
        ({"embeddings_path_column": "id"}, "exactly one of embeddings_column and"),
        ({"label_columns": ["a"], "label_prefix": "x"}, "label_columns or label_prefix"),
        ({"label_columns": ["a", "b", "a"]}, "label_columns names a column twice"),
        ({"valid_fraction": 1.5}, "data.options.valid_fraction = 1.5"),
        ({"valid_fraction": 0.2, "valid_split": "validation"}, "valid_split or valid_fraction"),
        ({"keywords": {"cardio": ["heart"]}}, "keywords names 'cardio', which is no class"),
    ],
)
def test_a_bad_option_is_one_line_naming_it(tmp_path, saved, options, message):
    with pytest.raises(ConfigError) as err:
        open_hf(tmp_path, saved, **options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_missing_option_is_named_with_what_it_is(tmp_path, saved):
    with pytest.raises(ConfigError, match=r"data\.options\.report_column is required \(the col"):
        HFDataset(DataConfig(options={"path": str(saved), "embeddings_column": "e"}), tmp_path)
    with pytest.raises(ConfigError, match=r"set data\.options\.path .* or --data-dir"):
        HFDataset(DataConfig(options=COLUMNS), tmp_path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"label_columns": ["cardiomegaly", "nodule"]},
            "has no column 'nodule' (data.options.label_columns); did you mean 'lung_nodule'?",
        ),
        ({"report_column": "cardiomegaly"}, "column 'cardiomegaly' (data.options.report_column)"),
        ({"embeddings_column": "report"}, "expected an array [N, d] or [N, T, d] of numbers"),
        ({"label_columns": ["report"]}, "column 'report' (data.options.label_columns) holds"),
        ({"positions_column": "id"}, "expected a list of numbers z[N] per row"),
        ({"valid_split": "test"}, "has no split 'test' (data.options.valid_split)"),
        ({"train_split": "training"}, "its splits: train, validation"),
        ({"label_prefix": "y_"}, "no column is named y_<class>"),
    ],
)
def test_a_missing_or_mistyped_column_or_split_is_one_line(tmp_path, saved, options, message):
    with pytest.raises(DataError) as err:
        open_hf(tmp_path, saved, **options)
    assert message in str(err.value) and str(saved) in str(err.value)


def test_data_that_is_not_there_or_has_no_validation_split(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_hf(tmp_path, tmp_path / "absent")
    only_train = save(tmp_path / "one", train=rows(4, 0, "r"))
    with pytest.raises(
        DataError, match=r"set data\.options\.valid_split or data\.options\.valid_f"
    ):
        open_hf(tmp_path, only_train)
    with pytest.raises(ConfigError, match="valid_split 'train' is the train split"):
        open_hf(tmp_path, only_train, valid_split="train")
    import datasets

    datasets.Dataset.from_dict(rows(4, 0, "r")).save_to_disk(str(tmp_path / "single"))
    for options in ({}, {"valid_split": "validation"}):  # one Dataset is every split
        with pytest.raises(DataError, match=r"holds one split; set data\.options\.valid_fraction"):
            open_hf(tmp_path, tmp_path / "single", **options)
    assert len(open_hf(tmp_path, tmp_path / "single", valid_fraction=0.25).records("valid")) == 1
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: load_dataset\('parquet'\) cannot read"):
        open_hf(tmp_path, tmp_path / "junk.parquet")


def test_an_empty_split_is_an_error(tmp_path):
    table = rows(4, 0, "r")
    empty = save(tmp_path / "empty", train=table, validation={k: [] for k in table})
    with pytest.raises(DataError, match="split 'validation' was saved with no rows"):
        open_hf(tmp_path, empty)
    one = save(tmp_path / "one", train=rows(1, 0, "r"))  # nothing left to hold out
    with pytest.raises(DataError, match="no rows for graftkit's valid split"):
        open_hf(tmp_path, one, valid_fraction=0.2)


def test_label_columns_default_to_the_integer_columns_or_a_prefix(tmp_path, saved):
    assert open_hf(tmp_path, saved).class_names == CLASSES  # id is a string column
    table = rows(6, 0, "r")
    renamed = {(f"label_{k}" if k in CLASSES else k): v for k, v in table.items()}
    renamed["age"] = list(range(6))
    folder = save(tmp_path / "prefixed", train=renamed, validation=renamed)
    ds = open_hf(tmp_path, folder, label_prefix="label_")
    assert ds.class_names == CLASSES
    assert open_hf(tmp_path, folder).class_names == [f"label_{c}" for c in CLASSES] + ["age"]


def test_the_class_itself_has_no_classes():
    with pytest.raises(ConfigError, match="label columns of the data"):
        HFDataset.class_names  # noqa: B018


# -- texts ----------------------------------------------------------------------------------------
def test_phase_texts_come_from_the_reports_and_the_class_names(tmp_path):
    table = rows(2, 0, "r")
    table["report"] = [
        "Heart is enlarged. There is cardiomegaly; pleural effusions are present. No lung nodule.",
        "Normal study.",
    ]
    for c, values in zip(CLASSES, ([1, 1], [1, 0], [0, 1])):
        table[c] = values
    folder = save(tmp_path / "texts", train=table, validation=table)
    ds = open_hf(tmp_path, folder, normal_text="Nothing found.", prompt="Describe it.")
    first, second = ds.records("train")
    assert ds.condition_texts(first) == [
        (0, "There is cardiomegaly;"),
        (1, "pleural effusions are present."),
    ]
    # the report does not name its lung nodule: the class text stands in
    assert ds.condition_texts(second) == [
        (0, "Cardiomegaly is present."),
        (2, "Lung nodule is present."),
    ]
    orders = {ds.positive_findings_text(first, random.Random(seed)) for seed in range(8)}
    assert orders == {
        "There is cardiomegaly; pleural effusions are present.",
        "pleural effusions are present. There is cardiomegaly;",
    }
    assert ds.canonical_findings_text(first) == "Cardiomegaly. Pleural effusion."
    assert ds.narrative_text(second) == "Normal study."
    assert ds.prompt == "Describe it." and ds.normal_text == "Nothing found."
    corpus = ds.corpus(["narrative", "canonical_findings"])
    assert corpus == [first.findings, second.findings, "Cardiomegaly. Pleural effusion.",
                      "Cardiomegaly. Lung nodule."]  # fmt: skip
    assert ds.finding_words() == {"cardiomegaly", "pleural", "effusion", "lung", "nodule"}


# -- the extractor --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("There is cardiomegaly.", [1, 0, 0]),
        ("No cardiomegaly. Pleural effusion is seen.", [0, 1, 0]),
        ("Pleural effusions are absent.", [0, 0, 0]),  # negated by the cue after it
        ("Pleural_effusion and lung-nodules.", [0, 1, 1]),  # _ and - separate words; plural
        ("No effusion, but a lung nodule is present.", [0, 0, 1]),  # "but" ends the scope
        ("No cardiomegaly, pleural effusion or lung nodule.", [0, 0, 0]),
        ("Cardiomegaly is not seen; lung nodule.", [0, 0, 1]),  # ";" ends the sentence
        ("Cardiomegalyx. Pulmonary nodule.", [0, 0, 0]),  # whole words only, no synonyms
        ("Possible cardiomegaly.", [1, 0, 0]),  # uncertainty counts as present
    ],
)
def test_keyword_rule(text, expected):
    extractor = KeywordExtractor(classes=CLASSES)
    assert extractor.extract([text]).tolist() == [expected]


def test_keyword_plurals_and_extra_phrases():
    extractor = KeywordExtractor(classes=["Opacity", "Mass"], keywords={"Mass": ["lump"]})
    got = extractor.extract(["Opacities.", "A lump.", "Masses.", "Massive."]).tolist()
    assert got == [[1, 0], [0, 1], [0, 1], [0, 0]]


def test_the_evaluation_extractor_takes_the_datasets_classes(tmp_path, saved):
    ds = open_hf(tmp_path, saved, keywords={"lung_nodule": ["mass"]})
    extractor = evaluation_extractor(EvalConfig(), ds)  # the dataset supplies the options
    assert isinstance(extractor, KeywordExtractor) and extractor.class_names == CLASSES
    assert extractor.extract(["A mass."]).tolist() == [[0, 0, 1]]
    references = [v.findings for v in ds.records("valid")]
    truth = np.stack([v.labels for v in ds.records("valid")])
    assert (extractor.extract(references) == truth).all()  # the reports name every label


def test_keywords_without_classes_is_one_line():
    with pytest.raises(ConfigError, match="option classes: required"):
        KeywordExtractor()
    with pytest.raises(ConfigError, match="option keywords: 'Mas' is no class; did you mean"):
        KeywordExtractor(classes=["Mass"], keywords={"Mas": ["lump"]})


class _TwoClasses(LabelExtractor):
    name: ClassVar[str] = "two-classes"
    class_names: ClassVar[list[str]] = ["cardiomegaly", "lung_nodule"]

    def extract(self, texts):
        return np.zeros((len(texts), 2), dtype=np.int64)


class _Plugin:
    @hookimpl
    def register_label_extractors(self, register):
        register("two-classes", _TwoClasses)


def test_a_chosen_extractor_must_label_the_label_columns(tmp_path, saved):
    plugins.load_plugins()
    plugins.pm.register(_Plugin(), name="hf-test-extractor")
    try:
        with pytest.raises(ConfigError, match=r"two-classes labels .* name the same columns"):
            open_hf(tmp_path, saved, extractor="two-classes")
        ds = open_hf(
            tmp_path, saved, extractor="two-classes", label_columns=["cardiomegaly", "lung_nodule"]
        )
        assert ds.default_extractor == "two-classes"
        assert isinstance(evaluation_extractor(EvalConfig(), ds), _TwoClasses)
    finally:
        plugins.pm.unregister(name="hf-test-extractor")


def test_listing_plugins_imports_neither_torch_nor_datasets():
    code = (
        "import sys; from graftkit.cli import main; main(['plugins', '--json']); "
        "print(json.dumps([m for m in ('torch', 'datasets', 'graftkit.datasets.hf') "
        "if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code], capture_output=True, text=True, timeout=120
    )
    listing, loaded = out.stdout.rsplit("\n", 2)[0], json.loads(out.stdout.splitlines()[-1])
    assert loaded == [] and '"hf"' in listing and '"hf-smoke"' in listing
