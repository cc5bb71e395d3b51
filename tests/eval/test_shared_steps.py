"""Steps the evaluation, the per-epoch monitor, ``graftkit generate`` and the study share, each
defined once: generation settings and the label extractor."""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest

from graftkit import plugins
from graftkit.config import EvalConfig, GenerationConfig
from graftkit.eval.generation import generation_settings
from graftkit.hookspecs import hookimpl
from graftkit.labels import LabelExtractor, evaluation_extractor


def test_sampling_settings_pass_through():
    gen = generation_settings(GenerationConfig())
    assert gen["do_sample"] is True and gen["temperature"] == 0.6 and gen["top_p"] == 0.9


@pytest.mark.parametrize(
    "config", [GenerationConfig(num_beams=4), GenerationConfig(do_sample=False)]
)
def test_greedy_is_one_beam_without_sampling_settings(config):
    gen = generation_settings(config, greedy=True)
    assert gen["do_sample"] is False and gen["num_beams"] == 1
    assert "temperature" not in gen and "top_p" not in gen
    assert gen["max_new_tokens"] == config.max_new_tokens


def test_config_without_sampling_drops_temperature_and_top_p_only():
    gen = generation_settings(GenerationConfig(do_sample=False, num_beams=3))
    assert gen["num_beams"] == 3 and "temperature" not in gen and "top_p" not in gen


class OptionExtractor(LabelExtractor):
    class_names: ClassVar[list[str]] = ["a"]

    def extract(self, texts):
        return np.full((len(texts), 1), int(self.options.get("flag", 0)))


class Plugin:
    @hookimpl
    def register_label_extractors(self, register):
        register("opt-extractor", OptionExtractor)


@pytest.fixture
def option_plugin():
    plugins.load_plugins()
    plugins.pm.register(Plugin(), name="opt-plugin")
    yield
    plugins.pm.unregister(name="opt-plugin")


def test_extractor_is_chosen_and_built_with_the_run_options(option_plugin):
    """Name from the argument, else the config, else the dataset default; always built with
    ``eval.extractor_options`` (the study built it without them, so RadBERT could not be used)."""
    # a dataset gives its extractor no options of its own here (GraftDataset.extractor_options)
    dataset = SimpleNamespace(default_extractor="opt-extractor", extractor_options=lambda name: {})
    cfg = EvalConfig(extractor_options={"flag": 1})
    extractor = evaluation_extractor(cfg, dataset)
    assert isinstance(extractor, OptionExtractor) and extractor.extract(["x"]).tolist() == [[1]]
    with pytest.raises(plugins.UnknownNameError, match="nope"):
        evaluation_extractor(cfg, dataset, name="nope")
    with pytest.raises(plugins.UnknownNameError, match="other"):
        evaluation_extractor(cfg.model_copy(update={"extractor": "other"}), dataset)
