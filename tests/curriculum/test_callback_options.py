"""A misspelt callback name or option, or loss name, stops ``graftkit run`` before any work, with the closest
valid name, instead of when its phase starts (possibly hours into the run)."""

from __future__ import annotations

import pytest

from graftkit import plugins
from graftkit.cli import main
from graftkit.config import ConfigError, build_config
from graftkit.curriculum.callbacks import check_callbacks


def _phases(**overrides):
    profile = plugins.get("profile", "smoke")
    return build_config("ct_rate", overrides={**profile.overrides, **overrides}).phases


def test_a_misspelt_option_names_the_phase_the_callback_and_the_closest_option():
    phases = _phases(**{"phases.p3.callbacks.freeze_lora.after_epochh": 1})
    with pytest.raises(ConfigError) as err:
        check_callbacks(phases)
    assert str(err.value) == (
        "phases.p3.callbacks.freeze_lora: unknown option 'after_epochh'; "
        "did you mean 'after_epoch'? (options: after_epoch)"
    )


def test_a_misspelt_option_of_a_keyword_options_callback_gets_the_closest_too():
    """EWC takes ``**options`` (its option, ``lambda``, is a Python keyword)."""
    phases = _phases(**{"phases.p4.callbacks.ewc": {"lambd": 0.1}})
    with pytest.raises(ConfigError) as err:
        check_callbacks(phases)
    assert str(err.value) == (
        "phases.p4.callbacks.ewc: unknown option 'lambd'; did you mean 'lambda'? (options: lambda)"
    )


def test_the_shipped_curricula_pass():
    for name in ("smoke", "tiny", "paper"):
        profile = plugins.get("profile", name)
        check_callbacks(build_config("ct_rate", overrides=profile.overrides).phases)


def test_graftkit_run_stops_before_preparing_anything(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(
        [
            "run",
            "ct_rate",
            "--profile",
            "smoke",
            "--output-dir",
            str(run_dir),
            "--set",
            "phases.p3.callbacks.recalibrate.everyy=2",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "phases.p3.callbacks.recalibrate: unknown option 'everyy'; did you mean 'every'?" in err
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "phase1").exists()


def test_a_misspelt_loss_stops_graftkit_run_before_any_work(tmp_path, capsys):
    """A loss name is checked against the declared loss records for every phase before the data
    or the prior are touched, not when its phase starts."""
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    argv = ["run", "ct_rate", "--profile", "smoke", "--output-dir", str(run_dir)]
    argv += ["--set", f"data.cache_dir={cache}", "--set", "phases.p4.losses={lmm: 1.0}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "phases.p4.losses: unknown loss 'lmm'; did you mean 'lm'?" in err
    assert not cache.exists() and not (run_dir / "config.yaml").exists()
