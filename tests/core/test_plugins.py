"""The plugin kernel: hooks, validation, allow-list, CLI listing. One test per hook (test_hook_*)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from graftkit import plugins
from graftkit.config import BridgeConfig, ConfigError, Profile
from graftkit.data import GraftDataset
from graftkit.encoders import EncodedVolume, Encoder
from graftkit.hookspecs import hookimpl
from graftkit.labels import LabelExtractor

ROOT = Path(__file__).parents[2]


class _Registered:
    """Register an in-test plugin for the duration of a ``with`` block."""

    def __init__(self, plugin, name):
        self.plugin, self.name = plugin, name

    def __enter__(self):
        plugins.load_plugins()
        plugins.pm.register(self.plugin, name=self.name)
        return self.plugin

    def __exit__(self, *exc):
        plugins.pm.unregister(name=self.name)


class EchoEncoder(Encoder):
    name = "echo"
    dim = 4

    def encode(self, path):
        import numpy as np

        return EncodedVolume(np.zeros((2, 4), np.float32), np.arange(2, dtype=np.float32))


class KeywordExtractor(LabelExtractor):
    class_names: ClassVar[list[str]] = ["a", "b"]

    def extract(self, texts):
        import numpy as np

        return np.array([[int("a" in t), int("b" in t)] for t in texts])


def test_hook_register_encoders():
    class P:
        @hookimpl
        def register_encoders(self, register):
            register("echo", EchoEncoder)

    with _Registered(P(), "test-encoders"):
        assert plugins.get("encoder", "echo") is EchoEncoder
        assert plugins.registry("encoder").owners["echo"] == "test-encoders"


def test_hook_register_compressors():
    class P:
        @hookimpl
        def register_compressors(self, register):
            register("identity", lambda dim, bridge: dim)

    with _Registered(P(), "test-compressors"):
        assert plugins.get("compressor", "identity")(7, BridgeConfig()) == 7
    assert "zone" in plugins.registry("compressor").names()  # the core's own built-in plugin


def test_hook_register_label_extractors():
    class P:
        @hookimpl
        def register_label_extractors(self, register):
            register("kw", KeywordExtractor)

    with _Registered(P(), "test-extractors"):
        ex = plugins.get("extractor", "kw")()
        assert ex.extract(["a only", "b and a"]).tolist() == [[1, 0], [1, 1]]


def test_hook_register_datasets():
    class Tiny(GraftDataset):
        name = "tiny-test"

    class P:
        @hookimpl
        def register_datasets(self, register):
            register("tiny-test", Tiny)

    with _Registered(P(), "test-datasets"):
        assert plugins.get("dataset", "tiny-test") is Tiny


def test_hook_register_profiles():
    class P:
        @hookimpl
        def register_profiles(self, register):
            register("fast", Profile(name="fast", overrides={"seed": 3}))

    with _Registered(P(), "test-profiles"):
        assert plugins.get("profile", "fast").overrides == {"seed": 3}


def test_hook_register_callbacks():
    from graftkit.config import PhaseConfig
    from graftkit.curriculum.callbacks import Callback, build_callbacks

    class Halve(Callback):
        name = "halve"

        def __init__(self, factor: float = 0.5):
            self.factor = factor

    class P:
        @hookimpl
        def register_callbacks(self, register):
            register("halve", Halve)

    phase = PhaseConfig(
        name="p",
        trainable=["heads"],
        losses={"bce": 1.0},
        text="conditions",
        epochs=1,
        batch_size=2,
        lr=1e-3,
        callbacks={"halve": {"factor": 0.25}, "freeze_lora": {"after_epoch": 2}},
    )
    with _Registered(P(), "test-callbacks"):
        halve, freeze = build_callbacks(phase, 3)
        assert isinstance(halve, Halve) and halve.factor == 0.25
        assert freeze.name == "freeze_lora" and freeze.after_epoch == 2
        with pytest.raises(
            ConfigError,
            match=r"phases\.p3\.callbacks\.halve: unknown option 'x' \(options: factor\)",
        ):
            build_callbacks(phase.model_copy(update={"callbacks": {"halve": {"x": 1}}}), 3)
    with pytest.raises(ConfigError, match=r"phases\.p3\.callbacks: unknown callback 'halve'"):
        build_callbacks(phase, 3)


def test_misspelled_hook_is_refused_naming_the_plugin():
    class Typo:
        @hookimpl
        def register_encoder(self, register):  # missing "s"
            register("x", EchoEncoder)

    plugins.load_plugins()
    plugins.pm.register(Typo(), name="typo-plugin")
    try:
        with pytest.raises(plugins.PluginError, match="typo-plugin"):
            plugins.check_pending()
    finally:
        plugins.pm.unregister(name="typo-plugin")


def test_duplicate_name_is_refused_naming_both_plugins():
    class A:
        @hookimpl
        def register_encoders(self, register):
            register("dup", EchoEncoder)

    class B:
        @hookimpl
        def register_encoders(self, register):
            register("dup", EchoEncoder)

    with (
        _Registered(A(), "plugin-a"),
        _Registered(B(), "plugin-b"),
        pytest.raises(plugins.PluginError) as err,
    ):
        plugins.registry("encoder")
    assert "plugin-b" in str(err.value) and "plugin-a" in str(err.value)


def test_wrong_type_is_refused_naming_the_plugin():
    class Bad:
        @hookimpl
        def register_label_extractors(self, register):
            register("not-a-class", "hello")

    with (
        _Registered(Bad(), "bad-plugin"),
        pytest.raises(plugins.PluginError, match=r"bad-plugin.*LabelExtractor subclass"),
    ):
        plugins.registry("extractor")


def test_unknown_name_lists_registered_names():
    with pytest.raises(plugins.UnknownNameError) as err:
        plugins.get("dataset", "nope")
    assert "ct_rate" in str(err.value) and "nope" in str(err.value)


def _cli(*args, env=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "graftkit", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


def test_plugins_json_lists_builtin_plugins_with_hooks_and_versions():
    out = _cli("plugins", "--json")
    assert out.returncode == 0, out.stderr
    info = {p["name"]: p for p in json.loads(out.stdout)}
    assert {"ct_rate", "encoders", "graftkit.builtin"} <= set(info)
    assert info["ct_rate"]["version"] == "0.1.0"
    assert "register_datasets" in info["ct_rate"]["hooks"]
    assert "register_encoders" in info["encoders"]["hooks"]
    assert "ct_rate" in info["ct_rate"]["provides"]["dataset"]


def test_allow_list_limits_what_loads():
    only = json.loads(_cli("plugins", "--json", env={"GRAFTKIT_LOAD_PLUGINS": "encoders"}).stdout)
    assert {p["name"] for p in only} == {"encoders", "graftkit.builtin"}
    none = json.loads(_cli("plugins", "--json", env={"GRAFTKIT_LOAD_PLUGINS": ""}).stdout)
    assert {p["name"] for p in none} == {"graftkit.builtin"}


def test_unknown_dataset_is_one_line_and_exit_code_2():
    out = _cli("run", "no-such-dataset", "--quiet")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "ct_rate" in lines[0] and "no-such-dataset" in lines[0]


#: Modules the fast paths must not import: torch, and the plugins' dataset/encoder/extractor code.
HEAVY = ("torch", "sklearn", "pandas", "graftkit_ct_rate.dataset", "graftkit_encoders.lejepa",
         "graftkit_digits.dataset", "graftkit.data", "datasets", "graftkit.datasets.hf")  # fmt: skip

LOADED = """
import sys
from graftkit.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("LOADED", *[m for m in {heavy!r} if m in sys.modules])
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["run", "no-such-dataset"],
        ["plan", "no-such-dataset"],
        ["plugins", "--json"],
    ],
)
def test_help_and_name_errors_import_no_torch_nor_plugin_code(argv):
    """help, an unknown dataset and the plugin listing read names only (plugins
    register by ``"module:Class"`` reference), so they take well under a second, not ~5 s."""
    out = subprocess.run(
        [sys.executable, "-c", LOADED.format(heavy=HEAVY), *argv],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    loaded = out.stdout.rsplit("LOADED", 1)[1].split()
    assert loaded == [], f"graftkit {' '.join(argv)} imported {loaded}"


def test_a_reference_is_resolved_and_checked_on_first_use():
    class Lazy:
        @hookimpl
        def register_label_extractors(self, register):
            register("lazy-rules", "graftkit_ct_rate.labels.rules:CTRateRulesExtractor")
            register("lazy-missing", "graftkit_ct_rate.no_such_module:Thing")
            register("lazy-wrong", "graftkit.config:RunConfig")

    with _Registered(Lazy(), "lazy-plugin"):
        reg = plugins.registry("extractor")
        assert reg.items["lazy-rules"] == "graftkit_ct_rate.labels.rules:CTRateRulesExtractor"
        from graftkit_ct_rate.labels.rules import CTRateRulesExtractor

        assert reg.get("lazy-rules") is CTRateRulesExtractor
        with pytest.raises(plugins.PluginError, match=r"lazy-plugin.*lazy-missing.*cannot be"):
            reg.get("lazy-missing")
        with pytest.raises(plugins.PluginError, match=r"lazy-plugin.*LabelExtractor subclass"):
            reg.get("lazy-wrong")


def test_help_lists_every_verb():
    out = _cli("--help")
    for verb in ("run", "eval", "generate", "embed", "label", "plan", "synth", "study", "plugins"):
        assert re.search(rf"\b{verb}\b", out.stdout), verb


def test_every_hook_has_a_test_and_a_doc_heading():
    tests = Path(__file__).read_text()
    docs = (ROOT / "docs" / "plugins.md").read_text()
    for hook in plugins.HOOKS:
        assert f"def test_hook_{hook}(" in tests, f"hook {hook} has no test_hook_{hook}"
        assert re.search(rf"^#+ `?{hook}", docs, re.M), (
            f"hook {hook} has no heading in docs/plugins.md"
        )
    from graftkit import hookspecs

    specs = {n for n in dir(hookspecs) if n.startswith("register_")}
    assert specs == set(plugins.HOOKS)
