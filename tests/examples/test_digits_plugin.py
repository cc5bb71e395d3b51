"""The digits example plugin (examples/plugin_digits): labels, reports, extractor, encoder, dataset.

The package is imported from the repository folder when it is not installed (``conftest.py``)
and registered in-test with ``pm.register``; ``test_tutorial.py`` exercises the entry point.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import graftkit_digits
import numpy as np
import pytest
import torch
from graftkit_digits.dataset import DigitsDataset
from graftkit_digits.encoder import (
    ROWS,
    DigitRowEncoder,
    RowEncoder,
    RowEncoderConfig,
    cached_row_encoder,
    load_row_encoder,
    train_row_encoder,
)
from graftkit_digits.text import (
    CLASSES,
    DIGIT_CLASSES,
    PHRASES,
    DigitsRulesExtractor,
    digit_labels,
    write_report,
)

from graftkit import plugins
from graftkit.config import BridgeConfig, ConfigError

FAST_ENCODER = {"epochs": 2, "dim": 16, "layers": 1}


def _config(**fields):
    base = {"synth": {"encoder": FAST_ENCODER}, "limit_train": None, "limit_valid": None}
    return SimpleNamespace(**{**base, **fields})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    data = DigitsDataset(_config(), tmp_path_factory.mktemp("digits"))
    data.prepare()
    return data


# -- labels, reports, extractor ------------------------------------------------------------------
def test_extractor_recovers_the_labels_of_every_written_report():
    from sklearn.datasets import load_digits

    digits = load_digits().target
    reports = [write_report(int(d), i % 3, random.Random(i))[0] for i, d in enumerate(digits)]
    truth = np.stack([digit_labels(int(d)) for d in digits])
    np.testing.assert_array_equal(DigitsRulesExtractor().extract(reports), truth)
    assert len(set(reports)) > 1000  # wording varies: not one template per digit


def test_every_phrasing_names_exactly_its_class():
    extractor = DigitsRulesExtractor()
    for c, phrasings in enumerate(PHRASES):
        for sentence in phrasings:
            assert extractor.sentence_labels(sentence) == {c}, sentence


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No horizontal bar is seen.", set()),
        ("There is no straight stroke.", set()),
        ("A curved stroke stays open without closing.", {5}),  # cue after the mention
        ("Two loops, one at the top and one at the bottom.", {1, 2}),
        ("A closed loop is present.", set()),  # a loop with no position is neither class
        ("A horizontal bar crosses the digit. No open curve is seen.", {4}),
    ],
)
def test_negation_and_position_rules(text, expected):
    assert DigitsRulesExtractor().sentence_labels(text) == expected


def test_removing_a_shape_sentence_removes_only_that_label():
    extractor = DigitsRulesExtractor()
    for digit in range(10):
        report, sentences = write_report(digit, 1, random.Random(digit))
        for c, sentence in sentences.items():
            labels = extractor.extract([report.replace(sentence, "")])[0]
            expected = digit_labels(digit)
            expected[c] = 0
            np.testing.assert_array_equal(labels, expected)


def test_digit_table_and_errors():
    assert sorted({c for cs in DIGIT_CLASSES.values() for c in cs}) == list(range(len(CLASSES)))
    with pytest.raises(ValueError, match="digit must be 0-9"):
        digit_labels(10)
    with pytest.raises(TypeError, match="text 1 is NoneType"):
        DigitsRulesExtractor().extract(["A horizontal bar.", None])


# -- encoder ---------------------------------------------------------------------------------------
def _masked_row_error(model: RowEncoder, images: np.ndarray, seed: int = 0) -> float:
    rows = torch.as_tensor(images, dtype=torch.float32) / 16
    g = torch.Generator().manual_seed(seed)
    masked = torch.rand(len(rows), ROWS, generator=g).argsort(1) < 3
    with torch.no_grad():
        return float(((model.decode(model(rows, masked)) - rows) ** 2)[masked].mean())


def test_masked_row_pretraining_learns_to_fill_in_hidden_rows(dataset):
    train = dataset.images[dataset.indices["train"]]
    valid = dataset.images[dataset.indices["valid"]]
    config = RowEncoderConfig(**{**FAST_ENCODER, "epochs": 10})
    torch.manual_seed(config.seed)
    untrained = RowEncoder(config).eval()
    trained, _ = train_row_encoder(train, config)
    # Held-out images: the hidden rows are predicted far better than before training, and better
    # than the best row-independent guess (each pixel's training mean).
    baseline = ((valid / 16 - (train / 16).mean(0)) ** 2).mean()
    assert _masked_row_error(trained, valid) < 0.7 * _masked_row_error(untrained, valid)
    assert _masked_row_error(trained, valid) < baseline


def test_encoder_cache_depends_on_training_images_only(dataset, tmp_path):
    train = dataset.images[dataset.indices["train"]].copy()
    config = RowEncoderConfig(**FAST_ENCODER)
    first = cached_row_encoder(train, config, tmp_path)
    assert cached_row_encoder(train, config, tmp_path) == first  # no retraining
    assert dataset.encoder_path().name == first.name  # valid images play no part
    train[0, 0, 0] += 1
    assert cached_row_encoder(train, config, tmp_path) != first


def test_registered_encoder_reproduces_the_dataset_embeddings(dataset, tmp_path):
    volume = dataset.records("valid")[3]
    image = dataset.images[volume.meta["index"]]
    np.save(tmp_path / "digit.npy", image)
    encoder = DigitRowEncoder(weights=dataset.encoder_path())
    encoded = encoder.encode(tmp_path / "digit.npy")
    rows, z = dataset.load(volume)
    np.testing.assert_allclose(encoded.embeddings, rows.numpy(), atol=1e-5)
    np.testing.assert_array_equal(encoded.z_mm, z.numpy())
    # rows are contextual: changing the bottom row changes the top row's embedding
    image2 = image.copy()
    image2[-1] = 16 - image2[-1]
    np.save(tmp_path / "changed.npy", image2)
    changed = encoder.encode(tmp_path / "changed.npy").embeddings
    assert not np.allclose(changed[0], encoded.embeddings[0], atol=1e-4)


def test_encoder_rejects_bad_images(dataset, tmp_path):
    encoder = DigitRowEncoder(weights=dataset.encoder_path())
    np.save(tmp_path / "wide.npy", np.zeros((8, 9)))
    with pytest.raises(ValueError, match=r"wide\.npy: expected a finite 8x8 image"):
        encoder.encode(tmp_path / "wide.npy")
    np.save(tmp_path / "bright.npy", np.full((8, 8), 255.0))
    with pytest.raises(ValueError, match=r"bright\.npy: pixels must lie in 0\.\.16"):
        encoder.encode(tmp_path / "bright.npy")
    with pytest.raises(ValueError, match="needs --weights"):
        DigitRowEncoder()
    assert load_row_encoder(dataset.encoder_path()).config == RowEncoderConfig(**FAST_ENCODER)


# -- dataset ---------------------------------------------------------------------------------------
def test_split_is_stratified_disjoint_and_complete(dataset):
    train, valid = (set(map(int, dataset.indices[s])) for s in ("train", "valid"))
    assert not train & valid and len(train | valid) == 1797
    assert len(valid) == 360
    counts = np.bincount(dataset.digits[list(valid)], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_records_load_and_texts_agree_with_the_extractor(dataset):
    extractor = DigitsRulesExtractor()
    for volume in dataset.records("valid")[:50]:
        digit = int(dataset.digits[volume.meta["index"]])
        np.testing.assert_array_equal(volume.labels, digit_labels(digit))
        rows, z = dataset.load(volume)
        assert rows.shape == (8, dataset.embedding_dim) and rows.dtype == torch.float32
        np.testing.assert_array_equal(z.numpy(), np.arange(8))
        for c, text in dataset.condition_texts(volume):
            assert extractor.sentence_labels(text) == {c}
        np.testing.assert_array_equal(
            extractor.extract([dataset.narrative_text(volume)])[0], volume.labels
        )
        text = dataset.positive_findings_text(volume, random.Random(0))
        np.testing.assert_array_equal(extractor.extract([text])[0], volume.labels)


def test_limits_options_and_errors(tmp_path):
    small = DigitsDataset(_config(limit_train=7, limit_valid=5), tmp_path)
    assert [len(small.records(s)) for s in ("train", "valid")] == [7, 5]
    assert small.records("train")[0].name == f"digit_{int(small.indices['train'][0]):04d}"
    with pytest.raises(ValueError, match="unknown split 'test'"):
        small.records("test")
    with pytest.raises(
        ConfigError, match=r"^digits: data\.synth\.valid_fraction: Input should be less than 1$"
    ):
        DigitsDataset(_config(synth={"valid_fraction": 2}), tmp_path)
    with pytest.raises(ConfigError, match=r"^digits: data\.synth\.encoder\.epoch: unknown option$"):
        DigitsDataset(_config(synth={"encoder": {"epoch": 5}}), tmp_path)


def test_hooks_register_every_piece():
    if plugins.pm.get_plugin("digits") is None:
        plugins.load_plugins()
    registered = plugins.pm.get_plugin("digits") is not None
    if not registered:
        plugins.pm.register(graftkit_digits, name="digits")
    try:
        assert plugins.get("dataset", "digits") is DigitsDataset
        assert plugins.get("encoder", "digits-rows") is DigitRowEncoder
        assert plugins.get("extractor", "digits-rules") is DigitsRulesExtractor
        bridge = BridgeConfig(num_zones=4, num_heads=4)
        compressor = plugins.get("compressor", "digits-rows")(32, bridge)
        assert compressor.config.max_period == 64.0 and compressor.num_zones == 4
        tiny = plugins.get("profile", DigitsDataset.default_profile)
        assert tiny.dataset == "digits" and tiny.overrides["bridge.compressor"] == "digits-rows"
        assert plugins.get("profile", "digits-smoke").overrides["data.limit_train"] == 240
    finally:
        if not registered:
            plugins.pm.unregister(name="digits")
