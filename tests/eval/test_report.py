"""Run report: HTML structure, embedded PNGs, PNG copies on disk, missing and malformed inputs."""

from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from graftkit.eval.collapse import CollapseMonitor
from graftkit.eval.report import PLOT_NAMES, write_report

CLASSES = [
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL_SECTIONS = (
    "headline",
    "loss-curves",
    "progression",
    "per-class",
    "ablation",
    "probe",
    "grounding",
    "collapse",
)


def write_synthetic_run(run: Path, seed: int = 0) -> Path:
    """A run directory holding every report input, with plausible numbers."""
    rng = np.random.default_rng(seed)
    run.mkdir(parents=True, exist_ok=True)
    prevalence = {c: float(p) for c, p in zip(CLASSES, np.sort(rng.uniform(0.02, 0.6, 18))[::-1])}
    per_class = {}
    for c in CLASSES:
        p, r = rng.uniform(0.1, 0.8, 2)
        per_class[c] = {
            "f1": float(2 * p * r / (p + r)),
            "precision": float(p),
            "recall": float(r),
            "support": int(prevalence[c] * 300),
        }
    macro = lambda k: float(np.mean([v[k] for v in per_class.values()]))  # noqa: E731
    metrics = {
        "eval": {
            "macro_f1": macro("f1"),
            "macro_precision": macro("precision"),
            "macro_recall": macro("recall"),
            "per_class": per_class,
            "extractor_on_ground_truth": 0.982,
            "thresholded": {"macro_f1": 0.448, "upper_bound": True},
        },
        "phases": {
            "1": {"final_loss": 1.9, "val": {"macro_auc": 0.71, "macro_f1": 0.31}},
            "2": {"final_loss": 2.7, "val": {"top1": 0.42}},
            "3": {"final_loss": 1.1, "val": {"macro_f1": 0.40}},
            "4": {"final_loss": 0.9, "val": {"macro_f1": 0.43}},
        },
        "ablation": {
            "real": {"f1": 0.429, "precision": 0.45, "recall": 0.42},
            "zero": 0.186,
            "shuffle": {"f1": 0.21, "precision": 0.22, "recall": 0.2},
            "random": {"f1": 0.12, "precision": 0.15, "recall": 0.1},
            "nll": {
                "real": {"finding": 1.21, "other": 0.62},
                "zero": {"finding": 1.93, "other": 0.66},
                "shuffle": {"finding": 1.75, "other": 0.64},
            },
        },
        "probe": {
            "raw": {"macro_f1": 0.35, "macro_auc": 0.70},
            "p1": {"macro_f1": 0.41, "macro_auc": 0.76},
            "p2": 0.42,
            "p3": {"macro_f1": 0.40, "macro_auc": 0.75},
            "p4": {"macro_f1": 0.40, "macro_auc": 0.75},
        },
        "oracle": {
            "macro_f1": 0.47,
            "per_class": {c: float(rng.uniform(0.2, 0.9)) for c in CLASSES},
        },
        "prevalence": prevalence,
    }
    (run / "metrics.json").write_text(json.dumps(metrics, indent=1))
    rows = []
    for phase, epochs in ((1, 6), (2, 5), (3, 8), (4, 4)):
        for epoch in range(epochs):
            row = {"phase": phase, "epoch": epoch, "step": 10 * epoch, "lr": 1e-4}
            row["loss"] = float(3.0 / (phase + epoch) + rng.uniform(0, 0.1))
            row["val_loss"] = row["loss"] + 0.2
            if phase >= 3:
                row["val_macro_f1"] = float(0.2 + 0.03 * epoch)
            rows.append(row)
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monitor = CollapseMonitor(reliance_floor=0.2)
    for phase, series in ((3, [0.2, 0.3, 0.36, 0.33, 0.3, 0.35]), (4, [0.38, 0.4, 0.41])):
        for epoch, f1 in enumerate(series):
            monitor.update(phase, epoch, f1, f1 * (0.5 if epoch != 4 else 0.9))
    monitor.to_jsonl(run / "collapse.jsonl")
    zones = 32
    grounding_rows = []
    for i, c in enumerate(CLASSES[:8]):
        w = np.exp(-0.5 * ((np.arange(zones) - 4 * i) / 3.0) ** 2)
        grounding_rows.append({"label": c, "weights": (w / w.sum()).tolist()})
    (run / "grounding.json").write_text(json.dumps({"zones": zones, "rows": grounding_rows}))
    return run


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.section_ids: list[str] = []
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "img":
            self.images.append(attrs)
        if tag == "section":
            self.section_ids.append(attrs["id"])


def _parse(path: Path) -> tuple[str, _Collector]:
    text = path.read_text(encoding="utf-8")
    collector = _Collector()
    collector.feed(text)
    return text, collector


def _decode_png(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    data = base64.b64decode(src[len(prefix) :], validate=True)
    assert data.startswith(PNG_SIGNATURE)
    return data


def _png_size(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[Path, Path]:
    run = write_synthetic_run(tmp_path_factory.mktemp("run") / "run")
    return run, write_report(run)


def test_full_report_has_every_section_and_decodable_images(full_report):
    run, out = full_report
    assert out == run / "report.html"
    text, doc = _parse(out)
    assert doc.section_ids == list(ALL_SECTIONS)
    assert 'class="note"' not in text  # every input was present
    assert len(doc.images) == len(PLOT_NAMES)
    for img in doc.images:
        data = _decode_png(img["src"])
        width, height = _png_size(data)
        assert width > 300 and height > 200
        assert img["alt"]


def test_png_copies_on_disk_equal_the_embedded_images(full_report):
    run, out = full_report
    _, doc = _parse(out)
    embedded = {_decode_png(img["src"]) for img in doc.images}
    on_disk = {(run / "plots" / f"{name}.png").read_bytes() for name in PLOT_NAMES}
    assert all(len(b) > 1000 and b.startswith(PNG_SIGNATURE) for b in on_disk)
    assert on_disk == embedded


def test_report_is_self_contained(full_report):
    _, out = full_report
    text, doc = _parse(out)
    for tag, attrs in doc.tags:
        assert tag not in ("script", "link", "iframe"), tag
        for name in ("src", "href"):
            assert not attrs.get(name, "data:").startswith(("http", "//", "file:")), attrs
    assert not re.search(r"url\(|@import|@font-face", text)


def test_headline_numbers_come_from_metrics(full_report):
    run, out = full_report
    text, _ = _parse(out)
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"<td>generation macro F1</td><td>{metrics['eval']['macro_f1']:.3f}</td>" in text
    # 1 - 0.186 / 0.429 of the F1 is removed by zeroing the tokens
    assert "56.6 %" in text
    assert "upper bound" in text
    # a monitor warning is listed (reliance fell to 0.1 in phase 3 epoch 4)
    assert "below the floor" in text


def test_missing_inputs_are_skipped_with_notes_and_stale_plots_removed(full_report, tmp_path):
    run = Path(shutil.copytree(full_report[0], tmp_path / "run"))
    assert (run / "plots" / "zone_grounding.png").exists()
    for name in ("grounding.json", "collapse.jsonl", "history.jsonl"):
        (run / name).unlink()
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["ablation"], metrics["prevalence"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    text, doc = _parse(write_report(run))
    assert doc.section_ids == list(ALL_SECTIONS)
    assert "grounding.json is missing" in text
    assert "collapse.jsonl is missing" in text
    assert "no loss curves" in text
    assert "no &#x27;ablation&#x27; scores" in text
    remaining = {p.stem for p in (run / "plots").glob("*.png")}
    assert remaining == {"metric_progression", "per_class_f1", "linear_probe"}
    assert len(doc.images) == 3


def test_empty_run_dir_gives_a_report_of_notes(tmp_path):
    text, doc = _parse(write_report(tmp_path))
    assert doc.images == []
    assert text.count('class="note"') == len(ALL_SECTIONS)


def test_malformed_grounding_row_names_the_row(tmp_path):
    run = write_synthetic_run(tmp_path / "run")
    data = json.loads((run / "grounding.json").read_text())
    data["rows"][3]["weights"] = data["rows"][3]["weights"][:-1]
    (run / "grounding.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"rows\[3\] \('Pericardial effusion'\) has 31 weights"):
        write_report(run)


def test_malformed_history_and_metrics_name_file_and_line(tmp_path):
    run = write_synthetic_run(tmp_path / "run")
    with (run / "history.jsonl").open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(ValueError, match=r"history.jsonl:24: not valid JSON"):
        write_report(run)
    (run / "history.jsonl").unlink()
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["eval"]["per_class"]["Cardiomegaly"] = {"precision": 0.3}
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match=r"eval.per_class.Cardiomegaly.f1"):
        write_report(run)
