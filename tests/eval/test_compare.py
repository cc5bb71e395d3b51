"""``graftkit compare RUN_A RUN_B`` on two hand-made evaluation folders: the paired differences
are those of ``compare_systems`` on the labels and texts the folders hold, volumes are matched by
name, and evaluations of other volumes are refused with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from graftkit.cli import main
from graftkit.eval.nlg import rouge_l_per_report
from graftkit.eval.stats import compare_systems

CLASSES = ["Effusion", "Nodule", "Emphysema"]


def _folder(path, rows):
    path.mkdir()
    per_class = {c: {"f1": 0.0, "precision": 0.0, "recall": 0.0, "support": 0} for c in CLASSES}
    (path / "metrics.json").write_text(
        json.dumps({"eval": {"per_class": per_class, "split": "valid"}})
    )
    (path / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(rng, n, flip):
    rows = []
    for i in range(n):
        truth = [c for c in CLASSES if rng.random() < 0.4]
        predicted = [c for c in CLASSES if (c in truth) != (rng.random() < flip)]
        rows.append(
            {
                "name": f"v{i}",
                "labels": truth,
                "predicted": predicted,
                "generated": " ".join(predicted) or "normal",
                "reference": " ".join(truth) or "normal study",
            }
        )
    return rows


def test_compare_equals_compare_systems_on_the_folders(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a_rows = _rows(rng, 30, 0.1)
    b_rows = [dict(r, predicted=p["predicted"], generated=p["generated"])
              for r, p in zip(a_rows, _rows(np.random.default_rng(1), 30, 0.4), strict=True)]  # fmt: skip
    a = _folder(tmp_path / "a", a_rows)
    b = _folder(tmp_path / "b", list(reversed(b_rows)))  # another order: matched by name
    assert main(["compare", str(a), str(b), "--json", "--permutations", "2000"]) == 0
    got = json.loads(capsys.readouterr().out)["metrics"]

    def matrix(rows, key):
        return np.array([[c in r[key] for c in CLASSES] for r in rows], dtype=int)

    truth = matrix(a_rows, "labels")
    want = compare_systems(
        truth,
        matrix(a_rows, "predicted"),
        matrix(b_rows, "predicted"),
        rouge_l_per_report([r["generated"] for r in a_rows], [r["reference"] for r in a_rows]),
        rouge_l_per_report([r["generated"] for r in b_rows], [r["reference"] for r in b_rows]),
        n_permutations=2000,
    )
    assert set(got) == {"macro_f1", "crg", "rouge_l"}
    for key in got:
        for field in ("a", "b", "difference", "low", "high", "p_value"):
            assert got[key][field] == pytest.approx(want[key][field], abs=1e-12), (key, field)
    assert got["macro_f1"]["difference"] > 0  # A flips 10 % of the labels, B 40 %


def test_other_volumes_are_refused_in_one_line(tmp_path, capsys):
    rows = _rows(np.random.default_rng(0), 5, 0.2)
    a = _folder(tmp_path / "a", rows)
    b = _folder(tmp_path / "b", rows[:3])
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "different volumes: 5 in A, 3 in B, 3 in both" in err
    assert str(a) in err and str(b) in err
    relabelled = [dict(r, labels=[]) if i == 0 else r for i, r in enumerate(rows)]
    c = _folder(tmp_path / "c", relabelled)
    assert main(["compare", str(a), str(c)]) == 2
    assert "different reference labels" in capsys.readouterr().err
    assert main(["compare", str(a), str(tmp_path / "nothing")]) == 2
    assert "no metrics.json" in capsys.readouterr().err
