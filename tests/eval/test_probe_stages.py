"""Pooled linear-probe plot and report for curricula of any length: ``slice_mean`` (``raw`` in
older metrics.json files), then ``p1`` .. ``pN``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from graftkit.eval import plots
from graftkit.eval.report import write_report

FIVE_PHASES = {
    "p3": {"macro_f1": 0.44, "macro_auc": 0.78},
    "raw": {"macro_f1": 0.35, "macro_auc": 0.70},
    "p5": {"macro_f1": 0.47, "macro_auc": 0.80},
    "p1": {"macro_f1": 0.41, "macro_auc": 0.76},
    "p4": 0.45,
    "p2": {"macro_f1": 0.42, "macro_auc": 0.77},
}


def test_probe_stages_orders_raw_then_phases_numerically():
    probe = {"p10": 0.5, "p9": 0.4, "p2": 0.3, "slice_mean": 0.2, "p1": 0.1, "extra": 0.0}
    assert plots.probe_stages(probe) == ["slice_mean", "p1", "p2", "p9", "p10"]
    assert plots.probe_stages({"p2": 0.3}) == ["p2"]
    # the key's name before the rename is still read, and named the same way
    assert plots.probe_stages({"p1": 0.1, "raw": 0.2}) == ["raw", "p1"]
    assert plots.probe_label("raw") == plots.probe_label("slice_mean") == "slice-embedding mean"


def test_probe_plot_shows_every_phase_of_a_five_phase_curriculum():
    fig = plots.probe_progression(FIVE_PHASES)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "slice-embedding mean",
        "P1",
        "P2",
        "P3",
        "P4",
        "P5",
    ]
    f1_line = next(line for line in ax.get_lines() if line.get_label() == "macro F1")
    assert list(f1_line.get_ydata()) == [0.35, 0.41, 0.42, 0.44, 0.45, 0.47]


def test_report_headline_quotes_the_last_phase_probe(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"probe": FIVE_PHASES}))
    text = write_report(run).read_text(encoding="utf-8")
    row = re.search(r"pooled linear probe macro F1 \((P\d+)\)</td>\s*<td[^>]*>([^<]+)<", text)
    assert row, "no pooled linear-probe row in the headline"
    assert row.groups() == ("P5", "0.470")
