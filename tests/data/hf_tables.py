"""Small Hugging Face datasets built in the tests (nothing is downloaded).

Imported by the tests of this folder as ``hf_tables`` (pytest puts the folder on ``sys.path``).

Each good row's embeddings are ``[N, 16]`` Gaussian noise plus 2.0 on channel ``c`` of its middle
slices for every positive class ``c``; its report says "There is <class>." for each positive and
"No <class>." for each negative, so the ``hf-keywords`` rule reads its labels back exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ["cardiomegaly", "pleural_effusion", "lung_nodule"]
DIM = 16
#: The options that name the columns of :func:`rows`.
COLUMNS = {
    "embeddings_column": "embeddings",
    "report_column": "report",
    "id_column": "id",
    "positions_column": "z_mm",
}
#: Skips planted by :func:`planted`, by reason (the part of each reason before ``:``).
PLANTED_TRAIN = {
    "non-finite embedding": 1,
    "empty report": 1,
    "bad labels": 1,
    "wrong d": 1,
    "duplicate": 1,  # two rows with one id: both left out, one skip (by name)
}
PLANTED_VALID = {"bad positions": 1}


def report(labels) -> str:
    words = [c.replace("_", " ") for c in CLASSES]
    said = [f"There is {w}." for w, on in zip(words, labels) if on]
    said += [f"No {w}." for w, on in zip(words, labels) if not on]
    return "Chest study reviewed. " + " ".join(said)


def rows(n: int, seed: int, prefix: str) -> dict[str, list]:
    """``n`` good rows: columns id, embeddings, z_mm, report and one per class."""
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {"id": [], "embeddings": [], "z_mm": [], "report": []}
    out.update({c: [] for c in CLASSES})
    for i in range(n):
        labels = rng.integers(0, 2, len(CLASSES))
        slices = int(rng.integers(6, 11))
        emb = rng.normal(size=(slices, DIM)).astype(np.float32)
        emb[slices // 3 : 2 * slices // 3 + 1, : len(CLASSES)] += 2.0 * labels
        out["id"].append(f"{prefix}{i:03d}")
        out["embeddings"].append(emb.tolist())
        out["z_mm"].append((np.arange(slices) * 2.5).tolist())
        out["report"].append(report(labels))
        for c, value in zip(CLASSES, labels):
            out[c].append(int(value))
    return out


def add_row(table: dict[str, list], **changes) -> None:
    """Append a copy of the table's first row with ``changes`` (a planted bad row)."""
    for key, values in table.items():
        values.append(changes.get(key, values[0]))


def planted(n_train: int = 48, n_valid: int = 16) -> tuple[dict, dict]:
    """Train and validation tables with the bad rows of :data:`PLANTED_TRAIN` and
    :data:`PLANTED_VALID` appended."""
    train, valid = rows(n_train, 0, "t"), rows(n_valid, 1, "v")
    nan = np.array(train["embeddings"][0])
    nan[1, 3] = np.nan
    add_row(train, id="bad-nan", embeddings=nan.tolist())
    add_row(train, id="bad-report", report="  ")
    add_row(train, id="bad-label", cardiomegaly=2)
    add_row(train, id="bad-width", embeddings=np.zeros((6, DIM - 4)).tolist(), z_mm=[0.0] * 6)
    add_row(train, id="twice")
    add_row(train, id="twice")
    add_row(valid, id="bad-z", z_mm=[0.0, 1.0])
    return train, valid


def save(folder: Path, **splits: dict) -> Path:
    """``save_to_disk`` a ``DatasetDict`` of the tables ``splits`` into ``folder``."""
    import datasets

    datasets.disable_progress_bars()
    data = datasets.DatasetDict({k: datasets.Dataset.from_dict(v) for k, v in splits.items()})
    data.save_to_disk(str(folder))
    return folder
