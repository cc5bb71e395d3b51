"""What a command prints about an evaluation, and which progress output reaches a log file."""

from __future__ import annotations

import io
import json

import pytest

from graftkit import progress
from graftkit.run_eval import format_summary
from graftkit.rundir import RunDir


def _summary(tmp_path, real: float, zero: float) -> list[str]:
    ablation = {m: {"macro_f1": f} for m, f in (("real", real), ("zero", zero))}
    ablation.update(shuffle={"macro_f1": 0.1}, random={"macro_f1": 0.1})
    # the evaluation's definition (graftkit.eval.evaluate): (real - zero) / real, 0 when real = 0
    ablation["zero_drop"] = (real - zero) / real if real > 0 else 0.0
    metrics = {
        "eval": {
            "volumes": 60,
            "split": "valid",
            "extractor": "digits-rules",
            "macro_f1": real,
            "macro_precision": real,
            "macro_recall": real,
        },
        "ablation": ablation,
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    return format_summary(RunDir(tmp_path))


def test_the_share_removed_by_zeroing_is_printed_when_the_decoder_reads_the_tokens(tmp_path):
    lines = _summary(tmp_path, real=0.699, zero=0.316)
    # (0.699 - 0.316) / 0.699 = 0.5479...: the digits-tiny figure of examples/plugin_digits
    assert "  zeroing the visual tokens removes 54.8% of generation F1" in lines


@pytest.mark.parametrize(("real", "zero"), [(0.108, 0.159), (0.0, 0.0), (0.2, 0.2)])
def test_no_share_is_printed_when_zeroed_tokens_score_as_well(tmp_path, real, zero):
    """A smoke-sized run: zeroed tokens score as well as the image's own, so the ratio (-46.7 %
    for 0.108 vs 0.159) would only read as a fault."""
    lines = _summary(tmp_path, real=real, zero=zero)
    expected = (
        f"  zeroing the visual tokens: n/a (zeroed {zero:.3f} >= real {real:.3f}: the decoder "
        "does not read the visual tokens yet)"
    )
    assert expected in lines
    assert not any("%" in line for line in lines)


def test_library_bars_only_on_a_terminal_and_never_when_quiet(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    progress.set_quiet(False)
    assert progress.library_bars()
    progress.set_quiet(True)
    try:
        assert not progress.library_bars()
    finally:
        progress.set_quiet(False)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a log file
    assert not progress.library_bars()
