"""CT-RATE as a graftkit dataset: the official layout plus precomputed slice embeddings.

docs/design.md, "CT-RATE, as its own files lay it out" (paths in :mod:`graftkit_ct_rate.layout`).
With no ``data_dir`` the embedded default synthesises a cohort in the same layout
(:mod:`graftkit_ct_rate.synth`), cached under ``cache_dir`` by a hash of its options.

Bad input (nothing is dropped silently; every skip is in ``self.skips`` with its reason, every
fallback in ``self.warnings``; docs/ct-rate.md has the full table):

- a CSV that is absent, empty, not UTF-8 (the line and byte offset are named), unparsable, or
  missing a required column stops with :class:`~graftkit.data.DataError` naming the file;
- a volume listed without an embedding file: skipped, ``missing embedding``;
- an unreadable file, a non-float dtype, a shape other than ``(N, d)``/``(N, T, d)``, a ``d`` other
  than the dataset's (the most common ``d`` of the first files read, unless given), NaN/Inf in the
  embeddings, an ``.npz`` ``z_mm`` of the wrong length, with NaN/Inf or not increasing along the
  slices (:func:`graftkit.data.check_positions`): that volume is skipped with
  its file named. Header checks read no data; the value scan reads each file once, a slice block
  at a time, and is remembered in ``workdir/ct_rate_scan.json`` by path, size and modification
  time;
- a file that turns bad after the scan is caught when loaded: :meth:`load` raises
  :class:`~graftkit_ct_rate.embeddings.EmbeddingError` naming the file (training skips it);
- a label cell other than 0/1, an empty ``Findings_EN``, a ``VolumeName`` that is a path leaving
  the embeddings folder, a ``ZSpacing`` outside (0, 20] mm or two metadata rows disagreeing on it:
  that volume is skipped;
- a volume in only one of the reports and labels CSVs, or listed twice: skipped (every row of it);
- no metadata file, no ``ZSpacing`` column or a missing ``ZSpacing`` value: positions fall back
  to the slice index (1 mm per slice) with a warning naming the volumes;
- embedding files that no CSV row names are counted in a warning.
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from graftkit.data import DataError, GraftDataset, Volume, check_positions
from graftkit.io import atomic_write_text, decode_utf8
from graftkit_ct_rate import layout
from graftkit_ct_rate.classes import CLASSES
from graftkit_ct_rate.embeddings import (
    EmbeddingError,
    first_nonfinite,
    open_embeddings,
    open_positions,
    read_header,
)
from graftkit_ct_rate.text import (
    CLASS_TEMPLATES,
    FINDING_PHRASES,
    NORMAL_TEXT,
    condition_segments,
    condition_sentences,
    narrative_text,
    positive_findings_text,
)

SCAN_CACHE = "ct_rate_scan.json"
#: Bumped when the scan checks more: older cache entries are re-scanned.
SCAN_VERSION = 3
#: Largest plausible slice spacing in mm (CT-RATE: 0.75-3 mm); larger values are data errors.
MAX_Z_SPACING = 20.0
#: How many headers vote on the embedding width when it is not given.
DIM_VOTE = 64


class CTRateDataset(GraftDataset):
    """CT-RATE volumes: reports, 18 labels, ``ZSpacing`` and one embedding file per volume.

    Args:
        config: the run's ``data`` section (:class:`graftkit.config.DataConfig`). ``data_dir`` is
            the CT-RATE root; ``None`` synthesises the default cohort (``synth`` options, see
            :class:`graftkit_ct_rate.synth.SynthOptions`) into ``cache_dir`` (else ``workdir``).
            The embeddings folder is ``config.embeddings_dir`` when the config has that field
            (relative paths are taken from ``data_dir``), else ``DATA_DIR/embeddings``.
        workdir: a folder this dataset may write to (scan cache, default cohort).
        embedding_dim: the expected ``d``; ``None`` takes the most common ``d`` among the first
            files read.
    """

    name: ClassVar[str] = "ct_rate"
    class_names: ClassVar[list[str]] = CLASSES
    normal_text: ClassVar[str] = NORMAL_TEXT
    prompt: ClassVar[str] = "Describe the findings of this chest CT."
    default_extractor: ClassVar[str] = "ct_rate-rules"
    splits: ClassVar[tuple[str, str]] = layout.SPLITS
    default_profile: ClassVar[str | None] = "tiny"

    def card_info(self) -> dict[str, Any]:
        """CT-RATE is CC BY-NC-SA 4.0, and so is the synthetic cohort, whose reports are built from
        sentences of CT-RATE's reports; weights trained on either carry that licence."""
        real = self.config.data_dir is not None
        return {
            "license": "cc-by-nc-sa-4.0",
            "datasets": ["ibrahimhamamci/CT-RATE"] if real else [],
            "tags": ["radiology", "chest-ct", "ct-rate", *([] if real else ["synthetic-cohort"])],
        }

    #: Anatomy and generic words of the 18 class names ("Pulmonary fibrotic sequela", "Medical
    #: material", ...): the NLL split counts "fibrotic", "sequela", not "pulmonary".
    finding_stopwords: ClassVar[frozenset[str]] = GraftDataset.finding_stopwords | {
        "wall",
        "pattern",
        "material",
        "medical",
        "lung",
        "artery",
        "pulmonary",
    }

    @classmethod
    def synthesize(cls, output: Path, **options: Any) -> dict[str, Any]:
        """``graftkit synth ct_rate --output DIR``: :func:`graftkit_ct_rate.synth.synthesize`."""
        from graftkit_ct_rate.synth import synthesize

        return synthesize(output, **options)

    def __init__(self, config: Any, workdir: Path, embedding_dim: int | None = None):
        super().__init__(config, workdir)
        self.root: Path | None = Path(config.data_dir) if config.data_dir is not None else None
        self._dim = embedding_dim
        self._records: dict[str, list[Volume]] = {}
        self._segments: dict[str, list[tuple[int, list[str]]]] = {}
        self._extractor: Any = None
        self._listed: set[str] = set()  # every VolumeName of the CSVs read so far

    # -- where the files are -------------------------------------------------------------------
    def prepare(self, progress: Any = None) -> None:
        """With no ``data_dir``: synthesise the default cohort once, cached by its options."""
        if self.config.data_dir is not None:
            self.root = Path(self.config.data_dir)
            if not self.root.is_dir():
                raise FileNotFoundError(f"CT-RATE data_dir {self.root} is not a directory")
            return
        from graftkit_ct_rate import synth
        from graftkit_ct_rate.sentence_bank import BANK_JSON, data_path

        options = synth.SynthOptions(**self.config.synth)
        bank = data_path(BANK_JSON).read_bytes()
        key = json.dumps(
            {
                "options": options.model_dump(),
                "generator": synth.GENERATOR_VERSION,
                "bank": hashlib.sha256(bank).hexdigest(),
            },
            sort_keys=True,
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        cache = Path(self.config.cache_dir or self.workdir)
        target = cache / f"ct_rate_synth_{digest}"
        if not (target / layout.ORACLE_FILE).exists():
            try:  # synthesize writes through graftkit.io.atomic_dir: complete or absent
                synth.synthesize(target, progress=progress, **options.model_dump())
            except FileExistsError:
                if not (target / layout.ORACLE_FILE).exists():
                    raise
                # another process finished the same cohort first
        self.root = target

    def _root(self) -> Path:
        if self.root is None or (self.config.data_dir is None and not self.root.exists()):
            self.prepare()
        assert self.root is not None
        return self.root

    @property
    def embeddings_dir(self) -> Path:
        root = self._root()
        configured = getattr(self.config, "embeddings_dir", None)
        if configured is None:
            return root / layout.EMBEDDINGS_DIR
        configured = Path(configured)
        return configured if configured.is_absolute() else root / configured

    # -- records --------------------------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        if self._dim is None:
            self.records(self.splits[0])
        if self._dim is None:
            raise ValueError(f"no readable embedding file under {self.embeddings_dir}")
        return self._dim

    def records(self, split: str) -> list[Volume]:
        """Usable volumes of ``split`` (first ``limit_{split}`` of them); skips go to ``self.skips``.

        Computed once per split. With a limit, files are examined only until the limit is met.
        """
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; CT-RATE splits are {list(self.splits)}")
        if split not in self._records:
            self._records[split] = self._read_split(split)
        return self._records[split]

    def _read_split(self, split: str) -> list[Volume]:
        root = self._root()
        reports_path, labels_path = layout.reports_csv(root, split), layout.labels_csv(root, split)
        reports = _read_csv(reports_path, layout.REQUIRED_REPORT_COLUMNS)
        labels = _read_csv(labels_path, layout.LABEL_COLUMNS)
        spacing, spacing_conflicts = self._z_spacings(root, split)
        limit = getattr(self.config, f"limit_{split}", None)

        # A volume listed twice is skipped as a whole (every row of it), once, by name: which of
        # two differing rows is right cannot be known, and using one of them silently would train
        # on a row the log says was skipped.
        label_counts = Counter(labels["VolumeName"])
        report_counts = Counter(reports["VolumeName"])
        label_rows = {
            name: row
            for name, row in zip(labels["VolumeName"], labels[CLASSES].itertuples(index=False))
            if label_counts[name] == 1
        }
        duplicates: set[str] = set()
        for name, count in label_counts.items():
            if count > 1 and not _unsafe_name(name):
                duplicates.add(name)
                self.skips.skip(split, name, f"duplicate: listed {count} times in {labels_path}")
        candidates = []
        for row in reports.itertuples(index=False):
            name = row.VolumeName
            bad_name = _unsafe_name(name)
            if bad_name:
                self.skips.skip(split, name, f"bad name: VolumeName {bad_name}")
                continue
            if name in duplicates:
                continue
            if report_counts[name] > 1:
                duplicates.add(name)
                self.skips.skip(
                    split, name, f"duplicate: listed {report_counts[name]} times in {reports_path}"
                )
                continue
            if name not in label_rows:
                self.skips.skip(split, name, f"missing labels: not in {labels_path}")
                continue
            values = _label_vector(label_rows[name])
            if isinstance(values, str):
                self.skips.skip(split, name, f"bad labels: {values}")
                continue
            if not _text(row.Findings_EN):
                # an empty target teaches nothing; an empty reference makes every generated
                # finding a false positive
                self.skips.skip(
                    split, name, f"empty report: Findings_EN is empty in {reports_path}"
                )
                continue
            if name in spacing_conflicts:
                values_seen = " and ".join(f"{z:g}" for z in spacing_conflicts[name])
                self.skips.skip(
                    split,
                    name,
                    f"bad metadata: ZSpacing {values_seen} in different rows of "
                    f"{layout.metadata_csv(root, split)}",
                )
                continue
            z = spacing.get(name)
            if z is not None and not (0 < z <= MAX_Z_SPACING):
                self.skips.skip(
                    split,
                    name,
                    f"bad metadata: ZSpacing = {z:g} mm in {layout.metadata_csv(root, split)} is "
                    f"outside (0, {MAX_Z_SPACING:g}] mm",
                )
                continue
            impressions = getattr(row, "Impressions_EN", "")
            candidates.append((name, values, row.Findings_EN, impressions))
        for name in label_rows:
            if name not in report_counts:
                self.skips.skip(split, name, f"missing report: not in {reports_path}")

        self._listed.update(label_counts)
        self._listed.update(report_counts)
        volumes = self._attach_embeddings(split, candidates, spacing, limit)
        fallback = [v.name for v in volumes if v.meta["z_source"] == "slice index"]
        if fallback:
            shown = ", ".join(fallback[:5]) + (" ..." if len(fallback) > 5 else "")
            message = (
                f"CT-RATE {split}: no usable ZSpacing for {len(fallback)} volume(s) ({shown}); "
                "their z positions fall back to the slice index (1 mm per slice)"
            )
            self.warnings.append(message)
            warnings.warn(message, stacklevel=3)
        if all(s in self._records or s == split for s in self.splits):
            self._note_unlisted_embeddings()
        return volumes

    def _note_unlisted_embeddings(self) -> None:
        """Count embedding files that no CSV row of either split names (a run-summary warning)."""
        folder = self.embeddings_dir
        if not folder.is_dir():
            return
        listed = {layout.volume_stem(str(name)) for name in self._listed}
        unlisted = sorted(
            str(path.relative_to(folder))
            for path in folder.rglob("*")
            if path.suffix in (".npy", ".npz")
            and not path.name.startswith(".")
            and path.stem not in listed
        )
        if unlisted:
            shown = ", ".join(unlisted[:5]) + (" ..." if len(unlisted) > 5 else "")
            self.warnings.append(
                f"{len(unlisted)} embedding file(s) under {folder} match no VolumeName in the "
                f"reports or labels CSVs and are not used ({shown})"
            )

    def _z_spacings(
        self, root: Path, split: str
    ) -> tuple[dict[str, float], dict[str, list[float]]]:
        """``ZSpacing`` by volume, and the volumes whose rows disagree (with every value seen).

        Missing or non-numeric values are left out (the slice-index fallback); numeric values
        are returned as they are and range-checked by the caller, so a wrong one skips its
        volume by name instead of silently becoming 1 mm.
        """
        path = layout.metadata_csv(root, split)
        if not path.exists():
            message = f"CT-RATE metadata {path} not found: z positions use the slice index"
            self.warnings.append(message)
            warnings.warn(message, stacklevel=4)
            return {}, {}
        meta = _read_csv(path, [])
        if "VolumeName" not in meta.columns or "ZSpacing" not in meta.columns:
            message = f"{path} has no VolumeName/ZSpacing column: z positions use the slice index"
            self.warnings.append(message)
            warnings.warn(message, stacklevel=4)
            return {}, {}
        spacing = pd.to_numeric(meta["ZSpacing"], errors="coerce")
        seen: dict[str, list[float]] = {}
        for name, z in zip(meta["VolumeName"], spacing):
            if np.isfinite(z):
                values = seen.setdefault(name, [])
                if float(z) not in values:
                    values.append(float(z))
        conflicts = {name: values for name, values in seen.items() if len(values) > 1}
        return {name: values[0] for name, values in seen.items()}, conflicts

    def _attach_embeddings(
        self, split: str, candidates: list, spacing: dict[str, float], limit: int | None
    ) -> list[Volume]:
        folder = self.embeddings_dir
        scan = _ScanCache(self.workdir / SCAN_CACHE)
        found = []
        for name, values, findings, impressions in candidates:
            path = next((p for p in layout.embedding_candidates(folder, name) if p.exists()), None)
            if path is None:
                stem = layout.volume_stem(name)
                self.skips.skip(
                    split, name, f"missing embedding: no {stem}.npy or {stem}.npz under {folder}"
                )
                continue
            found.append((name, values, findings, impressions, path))

        if self._dim is None and found:
            self._dim = _vote_dim([item[4] for item in found[:DIM_VOTE]])
        volumes = []
        for name, values, findings, impressions, path in found:
            if limit is not None and len(volumes) >= limit:
                break
            try:
                header = read_header(path)
                if header.dim != self._dim:
                    raise EmbeddingError(
                        "wrong d",
                        path,
                        f"d = {header.dim}, expected {self._dim} (shape {header.shape})",
                    )
                bad = scan.check(path, lambda p=path: _scan_file(p))
                if isinstance(bad, str):
                    raise EmbeddingError("bad positions", path, bad)
                if bad is not None:
                    raise EmbeddingError("non-finite embedding", path, f"NaN/Inf in slice {bad}")
            except EmbeddingError as err:
                self.skips.skip(split, name, str(err))
                continue
            z = spacing.get(name)
            volumes.append(
                Volume(
                    name=name,
                    split=split,
                    labels=values,
                    findings=_text(findings),
                    impressions=_text(impressions),
                    meta={
                        "embedding": str(path),
                        "num_slices": header.num_slices,
                        "tokens": header.shape[1] if len(header.shape) == 3 else 1,
                        "z_spacing": z if z is not None else 1.0,
                        "z_source": "z_mm"
                        if header.has_positions
                        else ("ZSpacing" if z else "slice index"),
                    },
                )
            )
        scan.save()
        return volumes

    # -- loading ----------------------------------------------------------------------------------
    def load(self, volume: Volume) -> tuple[torch.Tensor, torch.Tensor]:
        """Slice embeddings ``[N, d]`` float32 (CLS of ``(N, T, d)`` files) and ``z_mm[N]``.

        Reads one memory-mapped file. A file that holds NaN/Inf now (changed since ``records``)
        is added to ``self.skips`` and raises :class:`EmbeddingError` naming it.
        """
        path = Path(volume.meta["embedding"])
        slices = torch.from_numpy(np.array(open_embeddings(path), dtype=np.float32))
        if not torch.isfinite(slices).all():
            row = int((~torch.isfinite(slices)).flatten(1).any(1).nonzero()[0])
            err = EmbeddingError("non-finite embedding", path, f"NaN/Inf in slice {row}")
            self.skips.skip(volume.split, volume.name, str(err))
            raise err
        if slices.shape[1] != self.embedding_dim:
            raise EmbeddingError(
                "wrong d", path, f"d = {slices.shape[1]}, expected {self.embedding_dim}"
            )
        positions = open_positions(path) if volume.meta["z_source"] == "z_mm" else None
        if positions is not None and positions.shape != (slices.shape[0],):
            raise EmbeddingError(
                "bad positions",
                path,
                f"z_mm has shape {positions.shape}, expected ({slices.shape[0]},)",
            )
        if positions is not None and not np.isfinite(positions).all():
            raise EmbeddingError("bad positions", path, "z_mm holds NaN/Inf")
        if positions is None:
            positions = np.arange(slices.shape[0]) * volume.meta["z_spacing"]
        return slices, torch.as_tensor(positions, dtype=torch.float32)

    # -- texts ------------------------------------------------------------------------------------
    @property
    def extractor(self) -> Any:
        if self._extractor is None:
            from graftkit_ct_rate.labels.rules import CTRateRulesExtractor

            self._extractor = CTRateRulesExtractor()
        return self._extractor

    def _condition_sentences(self, volume: Volume) -> list[tuple[int, list[str]]]:
        key = f"{volume.split}/{volume.name}"
        if key not in self._segments:
            positives = [int(c) for c in np.flatnonzero(volume.labels)]
            self._segments[key] = (
                condition_sentences(
                    positives, volume.findings, volume.impressions, self.extractor.assign_sentences
                )
                if positives
                else []
            )
        return self._segments[key]

    def condition_texts(self, volume: Volume) -> list[tuple[int, str]]:
        """Per positive class, the report's own sentences for it (else its template); cached."""
        return condition_segments(self._condition_sentences(volume))

    def class_text(self, class_index: int) -> str:
        return CLASS_TEMPLATES[class_index]

    def finding_phrase(self, class_index: int) -> str:
        return FINDING_PHRASES.get(class_index, CLASSES[class_index])

    def positive_findings_text(self, volume: Volume, rng: random.Random) -> str:
        return positive_findings_text(self._condition_sentences(volume), rng, self.normal_text)

    def narrative_text(self, volume: Volume) -> str:
        include = bool(getattr(self.config, "include_impressions", False))
        return narrative_text(volume.findings, volume.impressions, include)

    def oracle(self) -> dict[str, Any] | None:
        """``oracle.json`` of a synthetic cohort (macro F1 ceiling on valid), else ``None``."""
        path = self._root() / layout.ORACLE_FILE
        return json.loads(path.read_text()) if path.exists() else None


def _read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    """One CT-RATE CSV, read as UTF-8 (a leading BOM is allowed); every failure names the file.

    A byte that is not UTF-8 stops the run with the line and byte offset, so the file can be
    fixed; guessing another encoding would change report text silently.
    """
    if not path.exists():
        raise FileNotFoundError(
            f"CT-RATE file {path} not found (layout: see graftkit_ct_rate.layout)"
        )
    try:
        frame = pd.read_csv(
            path, dtype={"VolumeName": str}, keep_default_na=True, encoding="utf-8-sig"
        )
    except UnicodeDecodeError:
        try:
            decode_utf8(path.read_bytes(), path)
        except ValueError as err:
            raise DataError(str(err)) from None
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty (no header row)") from None
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path} is missing column(s): {', '.join(missing)}")
    if "VolumeName" in frame.columns:
        frame["VolumeName"] = frame["VolumeName"].fillna("")  # an empty cell: skipped by name
    return frame


def _unsafe_name(name: Any) -> str | None:
    """Why a ``VolumeName`` cannot name a file inside the embeddings folder, else ``None``."""
    if not isinstance(name, str) or not name.strip():
        return f"{name!r} is empty"
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        return f"{name!r} points outside the embeddings folder"
    return None


def _scan_file(path: Path) -> int | str | None:
    """The first slice holding NaN/Inf, else a message about the file's ``z_mm``, else ``None``."""
    bad = first_nonfinite(open_embeddings(path))
    if bad is not None:
        return bad
    positions = open_positions(path)
    if positions is None:
        return None
    n = read_header(path).num_slices
    if positions.shape != (n,):
        return f"z_mm has shape {positions.shape}, expected ({n},)"
    return check_positions(positions)


def _label_vector(row: tuple) -> np.ndarray | str:
    """The 18 labels as int64 0/1, or a message naming the first bad cell."""
    values = []
    for name, value in zip(CLASSES, row):
        number = pd.to_numeric(value, errors="coerce")
        if number not in (0, 1):
            return f"{name} = {value!r}, expected 0 or 1"
        values.append(int(number))
    return np.asarray(values, dtype=np.int64)


def _vote_dim(paths: list[Path]) -> int | None:
    """The most common ``d`` among the readable headers of ``paths``."""
    votes: Counter[int] = Counter()
    for path in paths:
        try:
            votes[read_header(path).dim] += 1
        except EmbeddingError:
            continue
    return votes.most_common(1)[0][0] if votes else None


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


class _ScanCache:
    """Finiteness results by (path, size, mtime): each file's data is scanned once, ever."""

    def __init__(self, path: Path):
        self.path, self.dirty = path, False
        try:
            self.entries = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def check(self, file: Path, scan) -> int | None:
        stat = file.stat()
        key = str(file.resolve())
        stamp = [stat.st_size, stat.st_mtime_ns]
        entry = self.entries.get(key)
        if entry is not None and entry["stamp"] == stamp and entry.get("version") == SCAN_VERSION:
            return entry["bad_slice"]
        bad = scan()
        self.entries[key] = {"stamp": stamp, "bad_slice": bad, "version": SCAN_VERSION}
        self.dirty = True
        return bad

    def save(self) -> None:
        if not self.dirty:
            return
        atomic_write_text(self.path, json.dumps(self.entries))
        self.dirty = False
