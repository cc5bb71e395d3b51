from pathlib import Path

import pytest

from graftkit.config import ConfigError, RunConfig, build_config, load_yaml, parse_overrides
from graftkit.curriculum.phases import parse_phase_range


def test_paper_defaults_carry_the_paper_numbers():
    cfg = build_config("ct_rate")
    assert cfg.phases.p1.losses == {"bce": 1.5, "mil": 1.0, "orth": 1.0, "mmd": 0.5}
    assert cfg.phases.p3.lora_freeze_epoch == 6 and cfg.phases.p4.ewc_lambda == 100.0
    assert cfg.phases.p4.lr == 5e-7 and cfg.phases.p4.trainable == ["lora"]
    assert cfg.eval.generation.temperature == 0.6 and cfg.eval.generation.max_new_tokens == 384
    o = cfg.objective  # the loss constants that used to be literals in engine.py / align
    assert (o.infonce_init_temperature, o.mmd_gamma, o.focal_gamma, o.pos_weight_cap) == (
        0.1,
        5.0,
        2.0,
        10.0,
    )


def test_dotted_override_reaches_the_field():
    cfg = build_config(
        "ct_rate", overrides=parse_overrides(["phases.p3.lr=1e-5", "bridge.xattn_layers=[1,2]"])
    )
    assert cfg.phases.p3.lr == 1e-5
    assert cfg.bridge.xattn_layers == [1, 2]


def test_invalid_value_names_field_value_and_what_is_allowed():
    with pytest.raises(ConfigError) as err:
        build_config("ct_rate", overrides={"phases.p3.trainable": ["lora", "everything"]})
    msg = str(err.value)
    assert "phases.p3.trainable" in msg and "everything" in msg and "compressor" in msg
    with pytest.raises(ConfigError, match=r"phases\.p2\.lr.*-1.*greater than 0"):
        build_config("ct_rate", overrides={"phases.p2.lr": -1})
    with pytest.raises(ConfigError, match=r"bridge\.nonsense"):
        build_config("ct_rate", overrides={"bridge.nonsense": 1})


def test_resolved_config_repeats_the_run(tmp_path: Path):
    cfg = build_config("ct_rate", overrides={"seed": 5, "phases.p1.epochs": 2})
    cfg.save(tmp_path / "config.yaml")
    again = build_config("ct_rate", base=load_yaml(tmp_path / "config.yaml"))
    assert again == cfg
    assert isinstance(again, RunConfig)


@pytest.mark.parametrize("spec,expected", [("1-4", [1, 2, 3, 4]), ("3", [3]), ("2-3", [2, 3])])
def test_phase_ranges(spec, expected):
    assert parse_phase_range(spec) == expected


@pytest.mark.parametrize("spec", ["5-2", "4-2", "0", "1-5", "x"])
def test_bad_phase_ranges_are_refused(spec):
    with pytest.raises(ConfigError, match="--phases"):
        parse_phase_range(spec)


def test_removed_ewc_fisher_loads_from_old_configs_and_is_refused_when_asked_for():
    cfg = build_config("ct_rate", overrides={"phases.p4.ewc_fisher": False})  # old config.yaml
    assert "ewc_fisher" not in cfg.phases.p4.model_dump()
    with pytest.raises(ConfigError, match="ewc_fisher is not supported"):
        build_config("ct_rate", overrides={"phases.p4.ewc_fisher": True})
