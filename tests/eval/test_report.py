"""Run report: HTML structure, embedded PNGs, PNG copies on disk, missing and malformed inputs."""

from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from graftkit.eval import plots
from graftkit.eval.collapse import CollapseMonitor
from graftkit.eval.report import MAX_EXAMPLES, PLOT_NAMES, write_report

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
    "data-warnings",
    "ladder",
    "examples",
    "loss-curves",
    "progression",
    "per-class",
    "ablation",
    "probe",
    "grounding",
    "collapse",
)
#: sections rendered only when their input exists (no note when it does not)
OPTIONAL_SECTIONS = ("data-warnings", "ladder")
CORE_SECTIONS = tuple(s for s in ALL_SECTIONS if s not in OPTIONAL_SECTIONS)


PHASE_TERMS = {
    1: ("bce", "mil", "orth", "mmd", "total"),
    2: ("infonce", "mmd", "total"),
    3: ("lm", "focal", "jepa", "llm_cls", "total"),
    4: ("lm", "focal", "ewc", "total"),
}
PHASE_METRIC = {1: "valid_mil", 2: "loss", 3: "gen_f1", 4: "gen_f1"}


def write_synthetic_run(run: Path, seed: int = 0) -> Path:
    """A run directory holding every report input in the layout ``graftkit run`` writes (keys
    as in a smoke run's metrics.json / history.jsonl), with plausible numbers."""
    rng = np.random.default_rng(seed)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text("dataset: ct_rate\nprofile: tiny\nseed: 0\n")
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
    scores = lambda f1: {"macro_f1": f1, "macro_precision": f1 + 0.02, "macro_recall": f1 - 0.01}  # noqa: E731
    metrics = {
        "data": {
            "train": 600,
            "valid": 120,
            "skipped": 2,
            "warnings": ["2 volumes have no embeddings file and were skipped"],
        },
        "oracle": {
            "macro_f1": 0.47,
            "per_class": {c: float(rng.uniform(0.2, 0.9)) for c in CLASSES},
        },
        "prevalence": prevalence,
        "phases": {
            str(n): {"best": best, "metric": PHASE_METRIC[n], "seconds": seconds}
            for n, best, seconds in (
                (1, 0.77, 96.0),
                (2, 4.32, 57.5),
                (3, 0.40, 496.0),
                (4, 0.43, 3725.0),
            )
        },
        "eval": {
            "macro_f1": macro("f1"),
            "macro_precision": macro("precision"),
            "macro_recall": macro("recall"),
            "n": 120,
            "per_class": per_class,
            "split": "valid",
            "volumes": 120,
            "extractor": "ct_rate-rules",
            "checkpoint": {"path": "phase4", "phase": 4, "epochs_run": 4, "epoch": 3},
            "extractor_on_reference": scores(0.944),
            "thresholded": {"macro_f1": 0.448, "upper_bound": True},
        },
        "classifier": {
            "threshold_0.5": scores(0.278),
            "tuned_thresholds": {**scores(0.376), "upper_bound": True},
        },
        "ablation": {
            "real": scores(0.429),
            "zero": scores(0.186),
            "shuffle": scores(0.21),
            "random": scores(0.12),
            "zero_drop": 1 - 0.186 / 0.429,
            "nll": {
                "real": {"finding": 1.21, "other": 0.62, "finding_tokens": 460},
                "zero": {"finding": 1.93, "other": 0.66, "finding_tokens": 460},
                "shuffle": {"finding": 1.75, "other": 0.64, "finding_tokens": 460},
            },
        },
        "probe": {
            "raw": {"macro_f1": 0.35, "macro_auc": 0.70},
            "p1": {"macro_f1": 0.41, "macro_auc": 0.76},
            "p2": 0.42,
            "p3": {"macro_f1": 0.40, "macro_auc": 0.75},
            "p4": {"macro_f1": 0.40, "macro_auc": 0.75},
        },
        "ladder": [
            {"stage": "oracle", "macro_f1": 0.47, "detail": "knows the generator"},
            {"stage": "linear probe, raw slices", "macro_f1": 0.35, "detail": "5-fold"},
            {
                "stage": "classifier heads",
                "macro_f1": 0.278,
                "detail": "threshold 0.5",
                "macro_precision": 0.2,
                "fraction_of_oracle": 0.59,
            },
            {"stage": "generation", "macro_f1": 0.229, "detail": "labels read from the text"},
        ],
    }
    (run / "metrics.json").write_text(json.dumps(metrics, indent=1))
    rows = []
    for phase, epochs in ((1, 6), (2, 5), (3, 8), (4, 4)):
        for epoch in range(epochs):
            row = {"phase": phase, "epoch": epoch}
            for split in ("train", "valid"):
                for i, term in enumerate(PHASE_TERMS[phase]):
                    value = (i + 1) * 3.0 / (phase + epoch) + rng.uniform(0, 0.1)
                    row[f"{split}_{term}"] = float(value + (0.2 if split == "valid" else 0.0))
            if phase >= 3:
                row["gen_f1_real"] = float(0.2 + 0.03 * epoch)
                row["gen_f1_zero"] = float(0.1 + 0.01 * epoch)
                row["gen_f1"] = row["gen_f1_real"]
            row.update({"lr": 1e-4, "seconds": 12.5, "best": 0.3})
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
        grounding_rows.append({"label": c, "weights": (w / w.sum()).tolist(), "volumes": 4})
    grounding = {"zones": zones, "method": "occlusion (NLL rise when one zone token is zeroed)"}
    (run / "grounding.json").write_text(json.dumps({**grounding, "rows": grounding_rows}))
    generations = [
        {
            "name": f"valid_{i}_a_1.nii.gz",
            "generated": f"Generated report {i}: cardiomegaly <b>and</b> small nodule.",
            "reference": f"Reference report {i}: the heart is enlarged.",
            "labels": ["Cardiomegaly", "Emphysema"],
            "predicted": ["Cardiomegaly", "Lung nodule"],
            "generated_zero": f"Zeroed report {i}.",
        }
        for i in range(10)
    ]
    (run / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in generations))
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


def _section(text: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', text, re.S)
    assert match, anchor
    return match.group(1)


def test_every_section_has_its_figure(full_report):
    """Each figure sits in its own section, so no section falls back to a note when its data
    exist (the loss curves said "no loss columns" on a real history.jsonl)."""
    _, out = full_report
    text, _ = _parse(out)
    figure_of = {
        "ladder": "quality_ladder",
        "loss-curves": "loss_curves",
        "progression": "metric_progression",
        "per-class": "per_class_f1",
        "ablation": "ablation",
        "probe": "linear_probe",
        "grounding": "zone_grounding",
        "collapse": "collapse_monitor",
    }
    assert sorted(figure_of.values()) == sorted(PLOT_NAMES)
    for anchor in ALL_SECTIONS:
        body = _section(text, anchor)
        assert 'class="note"' not in body, anchor
        if anchor in figure_of:
            assert body.count("<img ") == 1, anchor


def test_headline_numbers_are_readable(full_report):
    run, out = full_report
    text, _ = _parse(out)
    metrics = json.loads((run / "metrics.json").read_text())
    headline = _section(text, "headline")
    assert f"<td>generation macro F1</td><td>{metrics['eval']['macro_f1']:.3f}</td>" in headline
    assert "<td>oracle macro F1</td><td>0.470</td>" in headline
    # real / zeroed / shuffled / random F1 and the share of F1 removed by zeroing
    assert re.search(
        r"<td>0\.429</td><td>0\.186</td><td>0\.210</td><td>0\.120</td><td>56\.6 %</td>", headline
    )
    assert "upper bound" in headline
    assert "600 train / 120 valid" in headline
    assert (
        "<td>checkpoint evaluated</td><td>phase4</td><td>phase 4, best epoch 3 of 4 run</td>"
        in (headline)
    )
    # no raw metric keys, no seconds printed as floats
    assert "eval." not in headline and "extractor_on" not in headline
    assert "training time</td><td>1 h 12 min</td>" in headline  # 96 + 57.5 + 496 + 3725 s
    phases = _section(text, "progression")
    assert "<td>8 min 16 s</td>" in phases and "496.0" not in phases
    # a monitor warning is listed (reliance fell to 0.1 in phase 3 epoch 4)
    assert "below the floor" in _section(text, "collapse")


def test_title_names_dataset_profile_and_date(full_report):
    _, out = full_report
    text, _ = _parse(out)
    title = re.search(r"<h1>(.*?)</h1>", text).group(1)
    assert title.startswith("graftkit run report: ct_rate, profile tiny, ")
    assert re.search(r"\d{4}-\d{2}-\d{2}$", title)


def test_example_generations_sit_beside_reference_and_labels(full_report):
    _, out = full_report
    text, _ = _parse(out)
    examples = _section(text, "examples")
    assert examples.count('<div class="example">') == MAX_EXAMPLES
    assert "The first 6 of 10 evaluated volumes" in examples
    first = examples.split('<div class="example">')[1]
    assert "valid_0_a_1.nii.gz" in first
    assert "Generated report 0: cardiomegaly &lt;b&gt;and&lt;/b&gt; small nodule." in first
    assert "Reference report 0: the heart is enlarged." in first
    assert "Zeroed report 0." in first
    assert '<span class="label found">Cardiomegaly</span>' in first
    assert '<span class="label missed">Emphysema</span>' in first
    assert '<span class="label invented">Lung nodule</span>' in first


def test_quality_ladder_and_data_warnings(full_report):
    _, out = full_report
    text, _ = _parse(out)
    ladder = _section(text, "ladder")
    assert "Quality ladder: where the signal is lost" in ladder
    stages = re.findall(r"<tr><td>([^<]+)</td><td>[\d.]+</td>", ladder)
    assert stages == ["oracle", "linear probe, raw slices", "classifier heads", "generation"]
    assert "<th>fraction of oracle</th>" in ladder and "59.0 %" in ladder
    assert "<th>macro recall</th>" not in ladder  # no row has it
    warnings = _section(text, "data-warnings")
    assert "<li>2 volumes have no embeddings file and were skipped</li>" in warnings


def test_grounding_says_what_was_measured(full_report):
    _, out = full_report
    text, _ = _parse(out)
    grounding = _section(text, "grounding")
    assert "occlusion" in grounding.lower() and "zeroed" in grounding
    assert "attention" not in text.lower()


def test_loss_columns_of_the_engine_are_losses():
    for key in ("train_bce", "valid_total", "train_llm_cls", "valid_infonce", "loss", "valid_nll"):
        assert plots.is_loss_key(key), key
    for key in ("gen_f1_real", "gen_f1", "valid_macro_f1", "gen_f1_zero", "reliance", "lr"):
        assert not plots.is_loss_key(key), key
    assert plots.loss_term("valid_total") == ("valid", "total")
    assert plots.loss_term("train_llm_cls") == ("train", "llm_cls")
    assert plots.loss_term("loss") == ("train", "loss")


def test_metric_progression_is_not_squashed_by_many_series():
    """27 series once shrank the axes to a 40-px strip under their legend."""
    history = [
        {"phase": p, "epoch": e, **{f"score_{k}": 0.01 * (k + e) for k in range(27)}}
        for p in (1, 2, 3, 4)
        for e in range(3)
    ]
    phases = {str(p): {"metric": "gen_f1", "best": 0.1 * p, "seconds": 0.4} for p in (1, 2, 3, 4)}
    fig = plots.metric_progression(history, phases)
    fig.canvas.draw()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    for ax in axes:
        assert ax.get_window_extent().height > 150
    # the end-of-phase panel plots the early-stopping score by name, not bookkeeping (seconds)
    assert [line.get_label() for line in axes[1].get_lines()] == ["gen_f1 (best)"]


def test_report_template_ships_in_the_package():
    template = resources.files("graftkit.eval") / "templates" / "report.html.j2"
    assert template.is_file()
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"eval/templates/*.j2"' in pyproject


def test_missing_inputs_are_skipped_with_notes_and_stale_plots_removed(full_report, tmp_path):
    run = Path(shutil.copytree(full_report[0], tmp_path / "run"))
    assert (run / "plots" / "zone_grounding.png").exists()
    for name in ("grounding.json", "collapse.jsonl", "history.jsonl", "generations.jsonl"):
        (run / name).unlink()
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["ablation"], metrics["prevalence"], metrics["ladder"], metrics["data"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    text, doc = _parse(write_report(run))
    assert doc.section_ids == list(CORE_SECTIONS)
    assert "grounding.json is missing" in text
    assert "collapse.jsonl is missing" in text
    assert "generations.jsonl is missing" in text
    assert "no loss curves" in text
    assert "no ablation scores" in text
    remaining = {p.stem for p in (run / "plots").glob("*.png")}
    assert remaining == {"metric_progression", "per_class_f1", "linear_probe"}
    assert len(doc.images) == 3


def test_empty_run_dir_gives_a_report_of_notes(tmp_path):
    text, doc = _parse(write_report(tmp_path))
    assert doc.images == []
    assert doc.section_ids == list(CORE_SECTIONS)
    assert text.count('class="note"') == len(CORE_SECTIONS)
    assert f"graftkit run report: {tmp_path.name}, " in text


def test_malformed_grounding_row_names_the_row(tmp_path):
    run = write_synthetic_run(tmp_path / "run")
    data = json.loads((run / "grounding.json").read_text())
    data["rows"][3]["weights"] = data["rows"][3]["weights"][:-1]
    (run / "grounding.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"rows\[3\] \('Pericardial effusion'\) has 31 weights"):
        write_report(run)


def test_malformed_ladder_and_warnings_name_the_field(tmp_path):
    run = write_synthetic_run(tmp_path / "run")
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["ladder"][2]["macro_f1"] = "high"
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match=r"ladder\[2\] \('classifier heads'\): macro_f1"):
        write_report(run)
    metrics["ladder"][2]["macro_f1"] = 0.3
    metrics["data"]["warnings"] = "one warning"
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match=r"data.warnings must be a list of strings"):
        write_report(run)


def test_malformed_history_and_metrics_name_file_and_line(tmp_path):
    run = write_synthetic_run(tmp_path / "run")
    with (run / "history.jsonl").open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(ValueError, match=r"history.jsonl:24: not valid JSON"):
        write_report(run)
    (run / "history.jsonl").unlink()
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["phases"]["2"] = 0.4
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match=r"phases.2 must be an object"):
        write_report(run)
    metrics["phases"]["2"] = {"best": 0.4}
    metrics["eval"]["per_class"]["Cardiomegaly"] = {"precision": 0.3}
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match=r"eval.per_class.Cardiomegaly.f1"):
        write_report(run)


def test_an_evaluation_folder_reads_training_outputs_from_the_run(full_report, tmp_path):
    """``graftkit eval RUN --output-dir DIR``: the curves and the title come from RUN."""
    run = full_report[0]
    folder = tmp_path / "eval"
    folder.mkdir()
    for name in ("metrics.json", "generations.jsonl", "grounding.json"):
        shutil.copy(run / name, folder / name)
    text, doc = _parse(write_report(folder, training_dir=run))
    assert doc.section_ids == list(ALL_SECTIONS) and 'class="note"' not in text
    assert "graftkit run report: ct_rate, profile tiny, " in text


def test_headline_shows_the_fields_scores_beside_the_baselines(tmp_path):
    """CRG, micro / weighted F1 with their intervals, both baselines, the skill and the text
    scores sit in the headline; a score that could not be computed says why, not 0."""
    run = tmp_path / "run"
    run.mkdir()
    ci = {
        key: {"estimate": v, "low": v - 0.04, "high": v + 0.03, "level": 0.95, "n_resamples": 1000}
        for key, v in (("macro_f1", 0.578), ("crg", 0.528), ("rouge_l", 0.211))
    }
    metrics = {
        "eval": {
            "macro_f1": 0.578,
            "micro_f1": 0.604,
            "weighted_f1": 0.632,
            "crg": 0.528,
            "skill": 0.4609,
            "ci": ci,
            "volumes": 200,
            "split": "valid",
        },
        "baselines": {
            "all_positive": {"macro_f1": 0.288, "crg": 1 / 3, "about": "names every finding"},
            "prevalence": {"macro_f1": 0.183, "crg": 0.35, "about": "at training prevalence"},
        },
        "oracle": {"macro_f1": 0.917},
        "nlg": {
            **{f"bleu_{n}": 0.1 / n for n in range(1, 5)},
            "meteor": None,
            "rouge_l": 0.211,
            "cider": 0.05,
            "tokenizer": "whitespace",
            "unavailable": {"meteor": "METEOR needs a Java runtime"},
        },
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    text, _ = _parse(write_report(run))
    headline = _section(text, "headline")
    for row in (
        "<td>generation macro F1</td><td>0.578 [0.538, 0.608]</td>",
        "<td>generation micro F1</td><td>0.604</td>",
        "<td>generation weighted F1</td><td>0.632</td>",
        "<td>generation CRG score</td><td>0.528 [0.488, 0.558]</td>",
        "<td>baseline: every finding named, macro F1 / CRG</td><td>0.288 / 0.333</td>",
        "<td>baseline: findings at training prevalence, macro F1 / CRG</td><td>0.183 / 0.350</td>",
        "<td>skill</td><td>0.46</td>",
        "<td>BLEU-1 / 2 / 3 / 4</td><td>0.100 / 0.050 / 0.033 / 0.025</td>",
        "<td>ROUGE-L</td><td>0.211 [0.171, 0.241]</td>",
        "<td>CIDEr-D</td><td>0.050</td>",
    ):
        assert row in headline, row
    meteor = re.search(r"<td>METEOR</td><td>([^<]*)</td><td>([^<]*)</td>", headline)
    assert meteor and meteor.group(1) == "n/a" and "Java runtime" in meteor.group(2)
    assert "eval." not in headline and "processes" not in headline
