"""Posterior-collapse monitor: reliance ratio, the two warnings, JSONL round trip."""

from __future__ import annotations

import logging

import pytest

from graftkit.eval.collapse import CollapseMonitor, visual_reliance


def test_reliance_ratio_definition():
    assert visual_reliance(0.4, 0.1) == pytest.approx(0.75)
    assert visual_reliance(0.4, 0.4) == 0.0
    assert visual_reliance(0.2, 0.3) == pytest.approx(-0.5)  # zeroed tokens do better
    assert visual_reliance(0.0, 0.0) == 0.0
    assert visual_reliance(0.0, 0.2) == 0.0  # defined as 0 when nothing is right with real tokens


def test_warns_only_after_two_consecutive_drops_within_a_phase():
    monitor = CollapseMonitor(reliance_floor=0.0)
    assert monitor.update(3, 0, 0.30, 0.1) == []
    assert monitor.update(3, 1, 0.28, 0.1) == []  # one drop
    assert monitor.update(3, 2, 0.29, 0.1) == []  # recovered
    assert monitor.update(3, 3, 0.27, 0.1) == []  # one drop
    warnings = monitor.update(3, 4, 0.25, 0.1)  # second drop in a row
    assert len(warnings) == 1 and "fell for two epochs running" in warnings[0]
    assert "0.270 -> 0.250" in warnings[0]
    # a new phase restarts the streak: P3's decline does not carry into P4's first epochs
    assert monitor.update(4, 0, 0.20, 0.1) == []
    assert monitor.update(4, 1, 0.19, 0.1) == []
    assert len(monitor.update(4, 2, 0.18, 0.1)) == 1
    # equal F1 is not a fall
    assert monitor.update(4, 3, 0.18, 0.1) == []


def test_warns_when_reliance_drops_below_the_floor(caplog):
    monitor = CollapseMonitor(reliance_floor=0.2)
    assert monitor.update(3, 0, 0.40, 0.30) == []  # reliance 0.25
    with caplog.at_level(logging.WARNING, logger="graftkit.eval.collapse"):
        warnings = monitor.update(3, 1, 0.50, 0.42)  # reliance 0.16
    assert len(warnings) == 1 and "visual reliance 0.160 is below the floor 0.200" in warnings[0]
    assert warnings[0] in caplog.text
    assert monitor.history[-1]["reliance"] == pytest.approx(0.16)
    assert monitor.update(3, 2, 0.0, 0.0)  # F1 = 0: reliance 0 < floor


def test_a_caller_that_prints_the_warnings_can_keep_them_out_of_the_log(caplog):
    """The training monitor prints each warning once on the main process, so it asks for them
    without logging (which every process would also print)."""
    monitor = CollapseMonitor(reliance_floor=0.2)
    with caplog.at_level(logging.WARNING, logger="graftkit.eval.collapse"):
        warnings = monitor.update(3, 0, 0.50, 0.45, log_warnings=False)
    assert len(warnings) == 1 and caplog.text == ""


def test_jsonl_round_trip_resumes_the_streak(tmp_path):
    monitor = CollapseMonitor(reliance_floor=0.3)
    monitor.update(3, 0, 0.4, 0.1)
    monitor.update(3, 1, 0.35, 0.1)
    path = monitor.to_jsonl(tmp_path / "collapse.jsonl")
    restored = CollapseMonitor.from_jsonl(path)
    assert restored.history == monitor.history
    assert restored.reliance_floor == 0.3
    # the falling streak continues across the restart
    assert any("two epochs running" in w for w in restored.update(3, 2, 0.3, 0.1))
    with pytest.raises(ValueError, match="not after the last recorded epoch 2"):
        restored.update(3, 2, 0.3, 0.1)


def test_bad_input_is_rejected(tmp_path):
    monitor = CollapseMonitor()
    with pytest.raises(ValueError, match="f1_real"):
        monitor.update(3, 0, 1.5, 0.1)
    with pytest.raises(ValueError, match="f1_zero"):
        monitor.update(3, 0, 0.5, float("nan"))
    with pytest.raises(ValueError, match="reliance_floor"):
        CollapseMonitor(reliance_floor=1.5)
    path = tmp_path / "collapse.jsonl"
    path.write_text('{"phase": 3, "epoch": 0}\n')
    with pytest.raises(ValueError, match=r"collapse.jsonl:1: collapse row lacks fields"):
        CollapseMonitor.from_jsonl(path)


def test_a_decoder_that_never_read_the_tokens_gets_one_note_per_phase_not_warnings():
    """A smoke-sized run: zeroed tokens score as well as real ones from the first epoch. That is
    not a collapse (nothing was lost), so each phase notes it once; as soon as the decoder shows
    some reliance, falling below the floor warns again."""
    monitor = CollapseMonitor(reliance_floor=0.2)
    assert monitor.update(3, 1, 0.077, 0.077) == []
    assert "does not read the visual tokens yet" in monitor.history[-1]["notes"][0]
    assert monitor.update(3, 2, 0.0, 0.0) == [] and monitor.history[-1]["notes"] == []
    assert monitor.update(3, 3, 0.05, 0.08) == [] and monitor.history[-1]["notes"] == []
    assert monitor.update(4, 1, 0.077, 0.077) == [] and len(monitor.history[-1]["notes"]) == 1
    # reliance (0.3 - 0.25) / 0.3 = 0.167 > 0: the decoder reads the tokens a little, below 0.2
    warnings = monitor.update(4, 2, 0.3, 0.25)
    assert len(warnings) == 1 and "visual reliance 0.167 is below the floor" in warnings[0]
    # from then on a decoder that stops reading them is warned about
    assert "below the floor" in monitor.update(4, 3, 0.3, 0.3)[0]
    assert monitor.history[-1]["notes"] == []
