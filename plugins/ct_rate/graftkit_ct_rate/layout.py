"""CT-RATE's own file layout (docs/design.md, "CT-RATE, as its own files lay it out").

One place that knows the file names, so the dataset reader and the synthetic-cohort writer take
the same paths and real and synthetic data go through the same code::

    DATA_DIR/
      radiology_text_reports/{train,validation}_reports.csv
      multi_abnormality_labels/{train,valid}_predicted_labels.csv
      metadata/{train,validation}_metadata.csv
      embeddings/{stem}.npy | {stem}.npz        (flat, or nested like the volumes below)
      oracle.json                                (synthetic cohorts only)

CT-RATE spells the validation split two ways: ``validation`` in the reports and metadata file
names, ``valid`` in the label file name and in every ``VolumeName``.
"""

from __future__ import annotations

from pathlib import Path

from graftkit_ct_rate.classes import CLASSES

SPLITS: tuple[str, str] = ("train", "valid")
#: split -> (token in the reports/metadata file names, token in the labels file name)
_FILE_TOKENS: dict[str, tuple[str, str]] = {
    "train": ("train", "train"),
    "valid": ("validation", "valid"),
}

REPORT_COLUMNS: list[str] = [
    "VolumeName",
    "ClinicalInformation_EN",
    "Technique_EN",
    "Findings_EN",
    "Impressions_EN",
]
#: The report columns the reader cannot do without.
REQUIRED_REPORT_COLUMNS: list[str] = ["VolumeName", "Findings_EN"]
LABEL_COLUMNS: list[str] = ["VolumeName", *CLASSES]
METADATA_COLUMNS: list[str] = [
    "VolumeName",
    "XYSpacing",
    "ZSpacing",
    "NumberofSlices",
    "RescaleIntercept",
    "RescaleSlope",
    "Rows",
    "Columns",
]

EMBEDDINGS_DIR = "embeddings"
EMBEDDING_KEY = "embeddings"
POSITIONS_KEY = "z_mm"
ORACLE_FILE = "oracle.json"


def _tokens(split: str) -> tuple[str, str]:
    if split not in _FILE_TOKENS:
        raise ValueError(f"unknown CT-RATE split {split!r}; expected one of {list(SPLITS)}")
    return _FILE_TOKENS[split]


def reports_csv(root: Path, split: str) -> Path:
    return Path(root) / "radiology_text_reports" / f"{_tokens(split)[0]}_reports.csv"


def labels_csv(root: Path, split: str) -> Path:
    return Path(root) / "multi_abnormality_labels" / f"{_tokens(split)[1]}_predicted_labels.csv"


def metadata_csv(root: Path, split: str) -> Path:
    return Path(root) / "metadata" / f"{_tokens(split)[0]}_metadata.csv"


def volume_stem(volume_name: str) -> str:
    """``valid_53_a_1.nii.gz`` -> ``valid_53_a_1`` (the embedding file's stem)."""
    for suffix in (".nii.gz", ".nii", ".npy", ".npz"):
        if volume_name.endswith(suffix):
            return volume_name[: -len(suffix)]
    return volume_name


def volume_folder(volume_name: str) -> Path | None:
    """``valid_53_a_1`` -> ``valid/valid_53/valid_53_a``, the folder CT-RATE keeps it in.

    ``None`` when the name does not follow ``{split}_{patient}_{scan}_{reconstruction}``.
    """
    parts = volume_stem(volume_name).split("_")
    if len(parts) < 4:
        return None
    split, patient, scan = parts[0], parts[1], parts[2]
    return Path(split) / f"{split}_{patient}" / f"{split}_{patient}_{scan}"


def embedding_candidates(embeddings_dir: Path, volume_name: str) -> list[Path]:
    """Where the embedding of one volume may be, in the order they are tried.

    Flat (``embeddings/{stem}.npy``, what the LeJEPA/DALE-CT scripts write) before nested
    (``embeddings/valid/valid_53/valid_53_a/{stem}.npy``, mirroring the volumes), ``.npy`` before
    ``.npz`` in each.
    """
    stem = volume_stem(volume_name)
    folders = [Path(embeddings_dir)]
    nested = volume_folder(volume_name)
    if nested is not None:
        folders.append(Path(embeddings_dir) / nested)
    return [folder / f"{stem}{ext}" for folder in folders for ext in (".npy", ".npz")]
