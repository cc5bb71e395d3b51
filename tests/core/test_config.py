from pathlib import Path

import pytest

from graftkit.config import ConfigError, RunConfig, build_config, load_yaml, parse_overrides
from graftkit.curriculum.phases import parse_phase_range


def test_paper_defaults_carry_the_paper_numbers():
    cfg = build_config("ct_rate")
    p1, p2, p3, p4 = cfg.phases
    assert len(cfg.phases) == 4
    assert p1.losses == {"bce": 1.5, "mil": 1.0, "orth": 1.0, "mmd": 0.5}
    assert p1.active_callbacks == {"init_compressor": {}}
    assert p2.active_callbacks == {} and p2.early_stopping.patience == 8
    assert p3.active_callbacks == {
        "warm_bridge": {},
        "freeze_lora": {"after_epoch": 6},
        "recalibrate": {"every": 1},
        "lars_projector_lr": {"min": 1.0, "max": 30.0},
        "collapse_monitor": {},
    }
    assert p4.active_callbacks == {"ewc": {"lambda": 100.0}, "collapse_monitor": {}}
    assert p4.lr == 5e-7 and p4.trainable == ["lora"]
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
    assert cfg.phases.get(3).lr == 1e-5 and cfg.phases.get(2).lr == 3e-5
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
    assert "ewc_fisher" not in cfg.phases.get(4).model_dump()
    with pytest.raises(ConfigError, match="ewc_fisher is not supported"):
        build_config("ct_rate", overrides={"phases.p4.ewc_fisher": True})


PRE_PHASE_LIST = {  # the phases of a config.yaml saved before the phase list (fixed p1..p4 fields)
    "p1": {"name": "a", "trainable": ["compressor", "heads"], "losses": {"bce": 1.0},
           "text": "conditions", "epochs": 1, "batch_size": 4, "lr": 1e-3,
           "lora_freeze_epoch": None, "recalibrate_every": None, "projector_lr_scale": None,
           "ewc_lambda": 0.0, "monitor_collapse": False},
    "p2": {"name": "b", "trainable": ["predictor"], "losses": {"infonce": 1.0},
           "text": "positive_findings", "epochs": 1, "batch_size": 4, "lr": 1e-3},
    "p3": {"name": "c", "trainable": ["lora", "projectors"], "losses": {"lm": 1.0},
           "text": "positive_findings", "epochs": 2, "batch_size": 4, "lr": 1e-3,
           "lora_freeze_epoch": 6, "recalibrate_every": 1, "projector_lr_scale": [1.0, 30.0],
           "monitor_collapse": True},
    "p4": {"name": "d", "trainable": ["lora"], "losses": {"lm": 1.0}, "text": "narrative",
           "epochs": 1, "batch_size": 4, "lr": 1e-3, "ewc_lambda": 100.0, "ewc_fisher": False,
           "monitor_collapse": True},
}  # fmt: skip


def test_a_config_saved_before_issue_15_loads_as_the_same_curriculum():
    """The fixed p1..p4 mapping with mechanics as fields becomes the ordered list with the
    callbacks the four-phase engine ran (compressor init in phase 1, --warm-bridge in 3)."""
    cfg = build_config("ct_rate", base={"phases": PRE_PHASE_LIST})
    assert [p.name for p in cfg.phases] == ["a", "b", "c", "d"]
    assert [p.active_callbacks for p in cfg.phases] == [
        {"init_compressor": {}},
        {},
        {
            "warm_bridge": {},
            "freeze_lora": {"after_epoch": 6},
            "recalibrate": {"every": 1},
            "lars_projector_lr": {"min": 1.0, "max": 30.0},
            "collapse_monitor": {},
        },
        {"ewc": {"lambda": 100.0}, "collapse_monitor": {}},
    ]
    # an old-style override on today's list form lands on the callback
    cfg = build_config("ct_rate", overrides={"phases.p3.lora_freeze_epoch": 2})
    assert cfg.phases.get(3).callbacks["freeze_lora"] == {"after_epoch": 2}
    cfg = build_config("ct_rate", overrides={"phases.p3.projector_lr_scale": None})
    assert "lars_projector_lr" not in cfg.phases.get(3).active_callbacks


def test_phases_are_a_list_of_any_length_addressed_by_number():
    base = load_yaml(Path(__file__).parents[2] / "graftkit" / "configs" / "paper.yaml")
    base["phases"] = base["phases"][:2] + [dict(base["phases"][1], name="extra")] * 3
    cfg = build_config("ct_rate", base=base, overrides={"phases.p5.lr": 0.5, "phases.4.epochs": 3})
    assert len(cfg.phases) == 5 and cfg.phases.get(5).lr == 0.5 and cfg.phases.get(4).epochs == 3
    assert parse_phase_range("2-5", len(cfg.phases)) == [2, 3, 4, 5]
    with pytest.raises(ConfigError, match=r"p1\.\.p5"):
        build_config("ct_rate", base=base, overrides={"phases.p6.lr": 0.5})
    with pytest.raises(ConfigError, match=r"phases\.p5\.lr"):
        build_config("ct_rate", base=base, overrides={"phases.p5.lr": -1})
    with pytest.raises(ConfigError, match=r"list of phases is expected.*got key .px."):
        build_config("ct_rate", base={"phases": {"p1": PRE_PHASE_LIST["p1"], "px": {}}})


def test_a_config_saved_with_the_unread_jepa_dim_still_loads():
    """``bridge.jepa_dim`` was never read by runs (the JEPA head is the text space's width);
    configs saved with it load, and today's schema has no such key to set."""
    base = load_yaml(Path(__file__).parents[2] / "graftkit" / "configs" / "paper.yaml")
    base["bridge"]["jepa_dim"] = 64
    cfg = build_config("ct_rate", base=base)
    assert "jepa_dim" not in cfg.bridge.model_dump()
    with pytest.raises(ConfigError, match="unknown config key"):
        build_config("ct_rate", overrides={"bridge.jepa_dimension": 64})
