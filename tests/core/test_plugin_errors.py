"""A plugin's option typo and a profile of another dataset are one line with exit code 2."""

from __future__ import annotations

from typing import ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from graftkit import plugins
from graftkit.cli import main
from graftkit.config import ConfigError, Profile
from graftkit.config.layers import resolve_config
from graftkit.data import GraftDataset
from graftkit.errors import one_line
from graftkit.hookspecs import hookimpl


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(3, gt=0)


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = 4
    inner: Inner = Field(default_factory=Inner)


class OptionsDataset(GraftDataset):
    """Builds its options model from ``data.options`` and lets pydantic's error escape."""

    name: ClassVar[str] = "options-test"

    def __init__(self, config, workdir):
        super().__init__(config, workdir)
        self.options = Options(**config.options)

    embedding_dim = 4
    records = load = condition_texts = class_text = None  # never reached


class OptionsPlugin:
    @hookimpl
    def register_datasets(self, register):
        register("options-test", OptionsDataset)

    @hookimpl
    def register_profiles(self, register):
        register("elsewhere", Profile(name="elsewhere", dataset="another-dataset"))
        register("anywhere", Profile(name="anywhere", overrides={"seed": 5}))


@pytest.fixture
def registered():
    plugins.load_plugins()
    plugins.pm.register(OptionsPlugin(), name="options-plugin")
    yield
    plugins.pm.unregister(name="options-plugin")


def _options(options):
    from graftkit.config import DataConfig

    return DataConfig(options=options)


def test_one_line_names_each_key_under_a_prefix():
    with pytest.raises(ValidationError) as err:
        Options(size="big", inner={"epoch": 5})
    # pydantic's own messages, one "KEY: message" per field, the typo as an unknown option
    assert one_line(err.value, key="data.synth") == (
        "data.synth.size: Input should be a valid integer, unable to parse string as an "
        "integer; data.synth.inner.epoch: unknown option"
    )
    assert one_line(err.value) == (
        "option size: Input should be a valid integer, unable to parse string as an integer; "
        "unknown option inner.epoch"
    )


def test_a_validation_error_while_building_a_plugin_object_names_plugin_and_key(registered):
    with pytest.raises(ConfigError) as err:
        plugins.build("dataset", "options-test", _options({"inner": {"epoch": 5}}), "/tmp")
    assert str(err.value) == (
        "dataset 'options-test' (plugin options-plugin): unknown option inner.epoch"
    )


def test_graftkit_run_prints_a_plugin_option_typo_as_one_line(registered, tmp_path, capsys):
    argv = ["--quiet", "run", "options-test", "--output-dir", str(tmp_path / "run")]
    assert main([*argv, "--set", "data.options={inner: {epoch: 5}}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "graftkit run: error: dataset 'options-test' (plugin options-plugin): "
        "unknown option inner.epoch"
    ]


def test_a_profile_of_another_dataset_is_refused_naming_those_that_fit(registered, capsys):
    with pytest.raises(ConfigError) as err:
        resolve_config("ct_rate", profile="elsewhere")
    message = str(err.value)
    assert message.startswith(
        "--profile elsewhere: made for dataset 'another-dataset', not 'ct_rate'; profiles for "
        "ct_rate: "
    )
    fitting = message.rsplit(": ", 1)[1].split(", ")
    assert {"smoke", "tiny", "paper", "anywhere"} <= set(fitting)
    assert "elsewhere" not in fitting and "hf-smoke" not in fitting
    # a profile made for no dataset in particular fits every dataset
    assert resolve_config("ct_rate", profile="anywhere")[0].seed == 5
    assert main(["run", "ct_rate", "--profile", "elsewhere"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graftkit run: error: --profile elsewhere:")
