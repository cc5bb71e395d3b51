"""``hf``: any Hugging Face ``datasets`` dataset on local disk as a full graftkit dataset.

A researcher whose data is already a ``datasets`` dataset (saved with ``save_to_disk``, written
as parquet, or a folder of data files that ``load_dataset`` reads) names its columns in the run
config's ``data.options`` (:class:`HFOptions`) and runs the curriculum, the evaluation and the
ablations with no plugin: per row, an embeddings column (an array ``[N, d]``, or ``[N, T, d]`` of
which token 0 is taken) or a column of ``.npy`` paths, a report column, and label columns whose
names are the classes. Everything is read from local files; nothing is downloaded.

The phase texts are built from the reports and the class names (docs/design.md, "Four-phase
curriculum"): per positive class, the report sentences that name it (found by the ``hf-keywords``
rule, :mod:`graftkit.datasets.keywords`), else ``"<Class> is present."``; the positive-findings
text is those sentences in a per-sample random order; the canonical findings text names the
positive classes in class order; the narrative is the report. The evaluation scores generated
text with the ``extractor`` option, by default ``hf-keywords`` over the label columns.

Bad input (docs/plugins.md, "The built-in `hf` dataset", lists every check):

- an unknown, missing or ill-typed option, a path that is not there or not readable by
  ``datasets``, a split or column that the data does not have, a column of the wrong type, a
  split with no row: one line, :class:`~graftkit.config.ConfigError` (options) or
  :class:`~graftkit.data.DataError` (data), naming the option, path, split or column;
- one bad row (an empty id or report, a label other than 0/1, an id listed twice, a missing or
  unreadable embedding, a shape other than ``(N, d)``/``(N, T, d)``, a ``d`` other than the
  dataset's (the most common ``d`` of the first rows), NaN/Inf in the embeddings, positions of
  the wrong length, not finite or not increasing): that row is skipped and counted with its
  reason;
- no ``positions_column`` (or an empty cell in it): positions fall back to the slice index, said
  once as a data warning.
"""

from __future__ import annotations

import difflib
import json
import random
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from graftkit.config import ConfigError
from graftkit.data import (
    DataError,
    GraftDataset,
    Volume,
    check_positions,
    join_condition_sentences,
)
from graftkit.datasets.keywords import (
    KeywordExtractor,
    class_phrase,
    split_sentences,
)

#: Split names taken as graftkit's ``valid`` split, in this order, when ``valid_split`` is unset.
VALID_SPLIT_NAMES = ("validation", "valid", "val")
#: How many rows vote on the embedding width ``d``.
DIM_VOTE = 64
#: Files that mark a ``save_to_disk`` folder (a ``DatasetDict``, or one ``Dataset``).
SAVED_MARKERS = ("dataset_dict.json", "state.json")


class HFOptions(BaseModel):
    """The ``hf`` dataset's settings: the run config's ``data.options``."""

    model_config = ConfigDict(extra="forbid")

    path: Path | None = Field(
        None,
        description="a save_to_disk folder, a .parquet file, or a folder load_dataset reads; "
        "default data.data_dir (--data-dir)",
    )
    train_split: str = Field("train", description="the split graftkit trains on")
    valid_split: str | None = Field(
        None, description="the split graftkit validates and evaluates on; default: validation, "
        "valid or val, the first the data has"
    )  # fmt: skip
    valid_fraction: float | None = Field(
        None, gt=0, lt=1, description="hold out this fraction of train_split as valid instead"
    )
    split_seed: int = Field(0, description="the seed of the valid_fraction hold-out")
    embeddings_column: str | None = Field(
        None, description="a column of arrays [N, d] (or [N, T, d]: token 0 is taken)"
    )
    embeddings_path_column: str | None = Field(
        None, description="a column of .npy paths, relative to the dataset folder"
    )
    positions_column: str | None = Field(
        None, description="a column of positions z[N] in mm; default the slice index"
    )
    report_column: str = Field(description="the column of report texts")
    label_columns: list[str] | None = Field(
        None, min_length=1, description="the label columns (0/1), whose names are the classes"
    )
    label_prefix: str | None = Field(
        None, min_length=1, description="the label columns are those named PREFIX<class>"
    )
    id_column: str | None = Field(None, description="a column naming each row; default its index")
    prompt: str | None = Field(None, description="the user turn of the chat prompt")
    normal_text: str | None = Field(None, description="the text of a sample with no positive class")
    extractor: str | None = Field(
        None, description="a registered label extractor; default hf-keywords over the classes"
    )
    keywords: dict[str, list[str]] = Field(
        default_factory=dict, description="hf-keywords: extra phrases per class"
    )

    @model_validator(mode="after")
    def _exclusive(self) -> HFOptions:
        if (self.embeddings_column is None) == (self.embeddings_path_column is None):
            raise ValueError("set exactly one of embeddings_column and embeddings_path_column")
        if self.label_columns is not None and len(set(self.label_columns)) < len(
            self.label_columns
        ):
            raise ValueError(f"label_columns names a column twice: {self.label_columns}")
        if self.label_columns is not None and self.label_prefix is not None:
            raise ValueError("set label_columns or label_prefix, not both")
        if self.valid_split is not None and self.valid_fraction is not None:
            raise ValueError("set valid_split or valid_fraction, not both")
        return self


def parse_options(options: dict[str, Any]) -> HFOptions:
    """:class:`HFOptions` from ``data.options``; the first problem as one :class:`ConfigError`
    line naming the option (an unknown one with the closest valid names)."""
    try:
        return HFOptions(**options)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        names = list(HFOptions.model_fields)
        if first["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, names, n=2)
            hint = f"did you mean {', '.join(close)}?" if close else f"options: {', '.join(names)}"
            raise ConfigError(f"hf: unknown option data.options.{key}; {hint}") from None
        if first["type"] == "missing":
            description = HFOptions.model_fields[key].description
            raise ConfigError(
                f"hf: option data.options.{key} is required ({description})"
            ) from None
        if not key:
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"hf: data.options: {message}") from None
        raise ConfigError(
            f"hf: option data.options.{key} = {first.get('input')!r}: {first['msg']}"
        ) from None


def _leaf(feature: Any) -> tuple[int, str] | None:
    """``(nesting depth, leaf dtype)`` of a ``datasets`` feature; ``None`` for other features
    (images, audio, dicts)."""
    import datasets

    if isinstance(feature, datasets.Value):
        return 0, feature.dtype
    if isinstance(feature, datasets.ClassLabel):
        return 0, "int64"
    if isinstance(feature, datasets.Array2D | datasets.Array3D):
        return len(feature.shape), feature.dtype
    if isinstance(feature, datasets.List | datasets.LargeList):
        inner = _leaf(feature.feature)
        return None if inner is None else (inner[0] + 1, inner[1])
    return None


def _numeric(dtype: str) -> bool:
    return dtype.startswith(("float", "int", "uint")) or dtype == "bool"


def _text_dtype(dtype: str) -> bool:
    return dtype in ("string", "large_string")


def embedding_array(value: Any) -> np.ndarray | str:
    """One row's embeddings as float32 ``[N, d]`` (token 0 of ``[N, T, d]``), or why not."""
    if value is None:
        return "missing embedding: the cell is empty"
    try:
        array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        return "bad shape: its rows have different lengths"
    if array.ndim == 3:
        array = array[:, 0]
    if array.ndim != 2:
        return f"bad shape: shape {array.shape}, expected (N, d) or (N, T, d)"
    if array.shape[0] == 0 or array.shape[1] == 0:
        return f"bad shape: shape {array.shape} holds no slice"
    return array


def _first_nonfinite(array: np.ndarray) -> int | None:
    bad = ~np.isfinite(array).all(axis=1)
    return int(np.flatnonzero(bad)[0]) if bad.any() else None


def open_dataset(path: Path, cache_dir: Path) -> Any:
    """A ``Dataset`` or ``DatasetDict`` from local files, never the Hub: a ``save_to_disk``
    folder (:data:`SAVED_MARKERS`), a ``.parquet`` file, or any other folder through
    ``load_dataset(folder)`` (converted once into ``cache_dir``)."""
    import datasets

    if not path.exists():
        raise DataError(f"hf: {path}: not found (data.options.path, or --data-dir)")
    if path.is_dir() and any((path / m).is_file() for m in SAVED_MARKERS):
        empty = _empty_saved_splits(path)
        if empty:
            raise DataError(f"hf: {path}: split {empty[0]!r} was saved with no rows")
        load, how = (lambda: datasets.load_from_disk(str(path))), "load_from_disk"
    elif path.is_file() and path.suffix == ".parquet":
        load = lambda: datasets.load_dataset(  # noqa: E731
            "parquet", data_files=str(path.resolve()), cache_dir=str(cache_dir)
        )
        how = "load_dataset('parquet')"
    elif path.is_dir():
        load = lambda: datasets.load_dataset(str(path.resolve()), cache_dir=str(cache_dir))  # noqa: E731
        how = "load_dataset"
    else:
        raise DataError(
            f"hf: {path}: not a save_to_disk folder, a .parquet file or a folder of data files"
        )
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return load()
    except Exception as err:  # datasets and pyarrow raise many types; each is a bad input here
        message = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"hf: {path}: {how} cannot read it ({message})") from None
    finally:
        if bars:
            datasets.enable_progress_bars()


class _LabelColumns:
    """``HFDataset.class_names`` on the class itself: the classes are the label columns of the
    data, which only an instance (built from a run config) has opened. Reading them from the
    class is an error naming why, not an empty list: a model sized for zero classes would be
    wrong without saying so. An instance's own ``class_names`` shadows this."""

    def __get__(self, obj: Any, owner: type) -> list[str]:
        raise ConfigError(
            "dataset hf: the classes are the label columns of the data, known to a dataset "
            "that opened it (HFDataset(config.data, workdir).class_names), not to the class"
        )


class HFDataset(GraftDataset):
    """``hf``: rows of a local Hugging Face dataset; classes are its label columns.

    Args:
        config: the run's ``data`` section; ``data.options`` holds :class:`HFOptions`,
            ``data.data_dir`` is the default ``path``, ``data.embeddings_dir`` (relative to the
            dataset folder) where ``embeddings_path_column`` paths are taken from, and
            ``data.limit_train`` / ``data.limit_valid`` cap the usable rows of a split.
        workdir: a folder this dataset may write to (``load_dataset``'s arrow cache).

    The data is opened, and every column checked, on construction: ``class_names``,
    ``prompt``, ``normal_text`` and ``default_extractor`` are then this instance's.
    """

    name: ClassVar[str] = "hf"
    #: Per instance: the label columns of the data (set when it is opened).
    class_names = _LabelColumns()  # type: ignore[assignment]
    default_extractor: ClassVar[str] = "hf-keywords"
    default_profile: ClassVar[str | None] = "hf-tiny"

    def __init__(self, config: Any, workdir: Path):
        super().__init__(config, workdir)
        self.options = parse_options(dict(getattr(config, "options", None) or {}))
        path = self.options.path or getattr(config, "data_dir", None)
        if path is None:
            raise ConfigError(
                "hf: no data: set data.options.path (a save_to_disk folder, a .parquet file or "
                "a folder load_dataset reads) or --data-dir"
            )
        self.path = Path(path).expanduser()
        self.root = self.path if self.path.is_dir() else self.path.parent
        embeddings_dir = getattr(config, "embeddings_dir", None)
        if embeddings_dir is not None:
            self.root = self.root / Path(embeddings_dir)
        data = open_dataset(self.path, self.workdir / "hf_cache")
        self.data: dict[str, Any] = dict(data) if hasattr(data, "keys") else {"": data}
        self._sources = self._split_sources()
        for split, (source, subset) in self._sources.items():
            if (len(subset) if subset is not None else len(self.data[source])) == 0:
                raise DataError(f"hf: {self._where(source)}: no rows for graftkit's {split} split")
        self._labels = self._check_columns()
        self.class_names = [name for name, _ in self._labels]  # type: ignore[misc]
        if self.options.prompt is not None:
            self.prompt = self.options.prompt  # type: ignore[misc]
        if self.options.normal_text is not None:
            self.normal_text = self.options.normal_text  # type: ignore[misc]
        self.default_extractor = self.options.extractor or "hf-keywords"  # type: ignore[misc]
        self._check_extractor()
        self.keywords = KeywordExtractor(classes=self.class_names, keywords=self.options.keywords)
        self._dim: int | None = None
        self._records: dict[str, list[Volume]] = {}
        self._segments: dict[str, list[tuple[int, list[str]]]] = {}
        self._rows: dict[str, Any] = {}

    # -- splits and columns ---------------------------------------------------------------------
    def _split(self, name: str, option: str) -> str:
        """The data's split ``name`` (a single ``Dataset`` is every split); one line if absent."""
        if "" in self.data:
            return ""
        if name not in self.data:
            raise DataError(
                f"hf: {self.path} has no split {name!r} (data.options.{option}); its splits: "
                f"{', '.join(self.data)}"
            )
        return name

    def _split_sources(self) -> dict[str, tuple[str, np.ndarray | None]]:
        """graftkit split -> (the data's split, its rows; ``None``: all of them)."""
        o = self.options
        train = self._split(o.train_split, "train_split")
        if o.valid_fraction is not None:
            n = len(self.data[train])
            order = np.random.default_rng(o.split_seed).permutation(n)
            n_valid = min(n - 1, max(1, round(o.valid_fraction * n))) if n > 1 else 0
            return {
                "train": (train, np.sort(order[n_valid:])),
                "valid": (train, np.sort(order[:n_valid])),
            }
        if "" in self.data:
            raise DataError(
                f"hf: {self.path} holds one split; set data.options.valid_fraction (e.g. 0.2) "
                "to hold out part of it for validation"
            )
        if o.valid_split is not None:
            valid = self._split(o.valid_split, "valid_split")
            if valid == train:
                raise ConfigError(
                    f"hf: data.options.valid_split {valid!r} is the train split: the model "
                    "would be validated and evaluated on its training rows; name another split "
                    "or set data.options.valid_fraction"
                )
        else:
            found = [name for name in VALID_SPLIT_NAMES if name in self.data]
            if not found:
                raise DataError(
                    f"hf: {self.path} has no split named {', '.join(VALID_SPLIT_NAMES)} (its "
                    f"splits: {', '.join(self.data)}); set data.options.valid_split or "
                    "data.options.valid_fraction"
                )
            valid = found[0]
        return {"train": (train, None), "valid": (valid, None)}

    def _where(self, source: str) -> str:
        return f"{self.path}" + (f" (split {source!r})" if source else "")

    def _check_columns(self) -> list[tuple[str, str]]:
        """``(class name, column)`` of the label columns; every named column checked in every
        split used (present, of a usable type)."""
        o = self.options
        sources = sorted({source for source, _ in self._sources.values()})
        first = self.data[sources[0]].features
        if o.label_columns is not None:
            labels = [(c, c) for c in o.label_columns]
        elif o.label_prefix is not None:
            labels = [
                (c.removeprefix(o.label_prefix), c)
                for c in first
                if c.startswith(o.label_prefix) and c != o.label_prefix
            ]
            if not labels:
                raise DataError(
                    f"hf: {self._where(sources[0])}: no column is named "
                    f"{o.label_prefix}<class> (data.options.label_prefix); columns: "
                    f"{', '.join(first)}"
                )
        else:
            taken = {o.id_column, o.report_column, o.positions_column}
            labels = [(c, c) for c, f in first.items() if c not in taken and _integer(f)]
            if not labels:
                raise DataError(
                    f"hf: {self._where(sources[0])}: no integer column to take as labels; set "
                    f"data.options.label_columns (columns: {', '.join(first)})"
                )
        unknown = sorted(set(o.keywords) - {name for name, _ in labels})
        if unknown:
            raise ConfigError(
                f"hf: data.options.keywords names {unknown[0]!r}, which is no class; classes: "
                f"{', '.join(name for name, _ in labels)}"
            )
        label_option = "label_prefix" if o.label_prefix is not None else "label_columns"
        for source in sources:
            features = self.data[source].features
            wanted = [
                ("report_column", o.report_column, "text"),
                ("embeddings_column", o.embeddings_column, "embeddings"),
                ("embeddings_path_column", o.embeddings_path_column, "text"),
                ("positions_column", o.positions_column, "positions"),
                ("id_column", o.id_column, "id"),
                *[(label_option, column, "label") for _, column in labels],
            ]
            for option, column, kind in wanted:
                if column is None:
                    continue
                if column not in features:
                    close = difflib.get_close_matches(column, list(features), n=1)
                    hint = f"did you mean {close[0]!r}? " if close else ""
                    raise DataError(
                        f"hf: {self._where(source)} has no column {column!r} (data.options."
                        f"{option}); {hint}columns: {', '.join(features)}"
                    )
                problem = _column_problem(kind, features[column])
                if problem:
                    raise DataError(
                        f"hf: {self._where(source)}: column {column!r} (data.options.{option}) "
                        f"{problem}"
                    )
        return labels

    def extractor_options(self, name: str) -> dict[str, Any]:
        """``hf-keywords`` labels this data's classes (its label columns) with its keywords."""
        if name == "hf-keywords":
            return {"classes": list(self.class_names), "keywords": dict(self.options.keywords)}
        return {}

    def _check_extractor(self) -> None:
        """A chosen extractor that declares its classes must label exactly the label columns."""
        if self.default_extractor == "hf-keywords":
            return
        from graftkit import plugins

        names = list(getattr(plugins.get("extractor", self.default_extractor), "class_names", []))
        if names and names != self.class_names:
            raise ConfigError(
                f"hf: data.options.extractor {self.default_extractor} labels {names}, but the "
                f"classes (label columns) are {self.class_names}: name the same columns in the "
                "same order with data.options.label_columns"
            )

    # -- records --------------------------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        if self._dim is None:
            self.records(self.splits[0])
        if self._dim is None:
            raise DataError(f"hf: {self.path}: no row of {self.splits[0]} has usable embeddings")
        return self._dim

    def records(self, split: str) -> list[Volume]:
        """Usable rows of ``split`` (the first ``limit_{split}`` of them); every other row is in
        ``self.skips`` with its reason. Computed once per split."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; the hf dataset's splits are {self.splits}")
        if split not in self._records:
            self._records[split] = self._read_split(split)
            if all(s in self._records for s in self.splits):
                self._note_shared_ids()
        return self._records[split]

    def _read_split(self, split: str) -> list[Volume]:
        o = self.options
        source, subset = self._sources[split]
        data = self.data[source]
        rows = subset if subset is not None else np.arange(len(data))
        columns = [o.report_column, *(c for _, c in self._labels)]
        columns += [c for c in (o.id_column, o.embeddings_path_column) if c is not None]
        table = data.select_columns(sorted(set(columns))).to_dict()
        # ids are counted over the data's whole split: with valid_fraction, the two rows of one
        # id may fall on either side of the hold-out
        ids = table[o.id_column] if o.id_column is not None else None
        counts = Counter(_id(value) for value in ids) if ids is not None else Counter()
        candidates = []
        for row in map(int, rows):
            name = _id(ids[row]) if ids is not None else f"{source or 'data'}_{row}"
            if not name:
                self.skips.skip(
                    split, f"{source or 'data'}_{row}", f"bad id: {o.id_column} is empty"
                )
                continue
            if counts[name] > 1:
                self.skips.skip(
                    split, name, f"duplicate: {o.id_column} {name!r} is in {counts[name]} rows"
                )
                continue
            labels = _label_vector([(c, table[c][row]) for _, c in self._labels])
            if isinstance(labels, str):
                self.skips.skip(split, name, f"bad labels: {labels}")
                continue
            report = table[o.report_column][row]
            if not isinstance(report, str) or not report.strip():
                self.skips.skip(split, name, f"empty report: {o.report_column} is empty")
                continue
            candidates.append((row, name, labels, report.strip()))
        limit = getattr(self.config, f"limit_{split}", None)
        volumes = self._attach_embeddings(split, source, candidates, table, limit)
        self._warn_positions(split, volumes)
        return volumes

    def _row_values(self, source: str) -> Any:
        """The data's split ``source`` as numpy arrays of the embeddings and positions columns."""
        if source not in self._rows:
            columns = [c for c in (self.options.embeddings_column, self.options.positions_column)]
            self._rows[source] = self.data[source].with_format(
                "numpy", columns=[c for c in columns if c is not None]
            )
        return self._rows[source]

    def _embedding_path(self, value: Any) -> Path | None:
        if not isinstance(value, str) or not value.strip():
            return None
        path = Path(value.strip()).expanduser()
        return path if path.is_absolute() else self.root / path

    def _read_embeddings(self, source: str, row: int, path: Path | None) -> np.ndarray | str:
        """One row's embeddings ``[N, d]`` (column or ``.npy`` file), or the reason it has none."""
        if self.options.embeddings_column is not None:
            value = self._row_values(source)[row][self.options.embeddings_column]
            if value is None:
                return f"missing embedding: {self.options.embeddings_column} is empty"
            return embedding_array(value)
        column = self.options.embeddings_path_column
        if path is None:
            return f"missing embedding: {column} is empty"
        if not path.is_file():
            return f"missing embedding: no file {path}"
        try:
            value = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            return f"unreadable embedding: {path} ({' '.join(str(err).split())})"
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
            kind = getattr(value, "dtype", type(value).__name__)
            return f"unreadable embedding: {path} holds {kind}, not an array of numbers"
        array = embedding_array(value)
        return f"{array} in {path}" if isinstance(array, str) else array

    def _usable(self, array: np.ndarray | str) -> np.ndarray | str:
        """``array`` if it has the dataset's ``d`` and is finite, else the reason it is not."""
        if isinstance(array, str):
            return array
        if array.shape[1] != self._dim:
            return f"wrong d: d = {array.shape[1]}, expected {self._dim}"
        bad = _first_nonfinite(array)
        return f"non-finite embedding: NaN/Inf in slice {bad}" if bad is not None else array

    def _positions(self, source: str, row: int, n: int) -> np.ndarray | str | None:
        """``z[N]`` of one row from ``positions_column``; ``None``: the slice-index fallback."""
        column = self.options.positions_column
        if column is None:
            return None
        value = self._row_values(source)[row][column]
        if value is None:
            return None
        try:
            z = np.asarray(value, dtype=np.float32)
        except (ValueError, TypeError):
            return f"bad positions: {column} is not a list of numbers"
        if z.shape != (n,):
            return f"bad positions: {column} has shape {z.shape}, expected ({n},)"
        bad = check_positions(z, column)
        return f"bad positions: {bad}" if bad is not None else z

    def _attach_embeddings(
        self, split: str, source: str, candidates: list, table: dict, limit: int | None
    ) -> list[Volume]:
        path_column = self.options.embeddings_path_column
        paths = {
            row: self._embedding_path(table[path_column][row]) if path_column else None
            for row, *_ in candidates
        }
        if self._dim is None:
            widths: Counter[int] = Counter()
            for row, *_ in candidates[:DIM_VOTE]:
                array = self._read_embeddings(source, row, paths[row])
                if not isinstance(array, str):
                    widths[array.shape[1]] += 1
            self._dim = widths.most_common(1)[0][0] if widths else None
        volumes = []
        for row, name, labels, report in candidates:
            if limit is not None and len(volumes) >= limit:
                break
            array = self._usable(self._read_embeddings(source, row, paths[row]))
            if isinstance(array, str):
                self.skips.skip(split, name, array)
                continue
            z = self._positions(source, row, array.shape[0])
            if isinstance(z, str):
                self.skips.skip(split, name, z)
                continue
            volumes.append(
                Volume(
                    name=name,
                    split=split,
                    labels=labels,
                    findings=report,
                    meta={
                        "source": source,
                        "row": row,
                        "embedding": str(paths[row]) if paths[row] is not None else None,
                        "num_slices": int(array.shape[0]),
                        "z_source": "positions" if z is not None else "slice index",
                    },
                )
            )
        return volumes

    def _warn_positions(self, split: str, volumes: list[Volume]) -> None:
        column = self.options.positions_column
        if column is None:
            if split != self.splits[0]:
                return
            message = (
                "hf: no data.options.positions_column: z positions are the slice index (1 mm "
                "per slice) for every sample"
            )
        else:
            fallback = [v.name for v in volumes if v.meta["z_source"] == "slice index"]
            if not fallback:
                return
            shown = ", ".join(fallback[:5]) + (" ..." if len(fallback) > 5 else "")
            message = (
                f"hf {split}: {column} is empty for {len(fallback)} sample(s) ({shown}); their "
                "z positions fall back to the slice index (1 mm per slice)"
            )
        self.warnings.append(message)
        warnings.warn(message, stacklevel=4)

    def _note_shared_ids(self) -> None:
        """With an ``id_column``: ids in both splits are a warning (the same sample in training
        and evaluation inflates the scores)."""
        if self.options.id_column is None:
            return
        shared = sorted(
            {v.name for v in self._records["train"]} & {v.name for v in self._records["valid"]}
        )
        if shared:
            shown = ", ".join(shared[:5]) + (" ..." if len(shared) > 5 else "")
            self.warnings.append(
                f"hf: {len(shared)} {self.options.id_column} value(s) are in both train and "
                f"valid ({shown})"
            )

    # -- loading --------------------------------------------------------------------------------
    def load(self, volume: Volume) -> tuple[torch.Tensor, torch.Tensor]:
        """Slice embeddings ``[N, d]`` float32 and positions ``z[N]`` (mm) of one row; a row that
        no longer reads as it did when listed raises :class:`DataError` naming it (training skips
        it, evaluation stops)."""
        source, row = volume.meta["source"], int(volume.meta["row"])
        path = Path(volume.meta["embedding"]) if volume.meta["embedding"] else None
        array = self._usable(self._read_embeddings(source, row, path))
        z = self._positions(source, row, array.shape[0]) if not isinstance(array, str) else None
        for problem in (array, z):
            if isinstance(problem, str):
                raise DataError(f"hf: {volume.split} {volume.name}: {problem}")
        assert isinstance(array, np.ndarray)
        if z is None:
            z = np.arange(array.shape[0], dtype=np.float32)
        return torch.from_numpy(np.array(array, dtype=np.float32)), torch.from_numpy(z)

    # -- texts ----------------------------------------------------------------------------------
    def finding_words(self) -> set[str]:  # type: ignore[override]
        """The base rule (:meth:`GraftDataset.finding_words`) over this instance's classes."""
        words = set()
        for name in self.class_names:
            for word in _words(name):
                if len(word) > 3 and word not in self.finding_stopwords:
                    words.add(word)
        return words

    def _condition_sentences(self, volume: Volume) -> list[tuple[int, list[str]]]:
        """Per positive class, the report's sentences that name it (``hf-keywords``, in report
        order), else its :meth:`class_text`; cached per row."""
        key = f"{volume.split}/{volume.name}"
        if key not in self._segments:
            assigned: dict[int, list[str]] = {}
            for sentence in split_sentences(volume.findings):
                for c in sorted(self.keywords.sentence_classes(sentence.lower())):
                    if sentence not in assigned.setdefault(c, []):
                        assigned[c].append(sentence)
            self._segments[key] = [
                (int(c), assigned.get(int(c)) or [self.class_text(int(c))])
                for c in np.flatnonzero(volume.labels)
            ]
        return self._segments[key]

    def condition_texts(self, volume: Volume) -> list[tuple[int, str]]:
        return [(c, " ".join(sentences)) for c, sentences in self._condition_sentences(volume)]

    def class_text(self, class_index: int) -> str:
        return f"{self.finding_phrase(class_index)} is present."

    def finding_phrase(self, class_index: int) -> str:
        return class_phrase(self.class_names[class_index])

    def positive_findings_text(self, volume: Volume, rng: random.Random) -> str:
        """The condition sentences in a random order, a sentence named by two classes once."""
        return join_condition_sentences(self._condition_sentences(volume), rng, self.normal_text)


def _column_problem(kind: str, feature: Any) -> str | None:
    """Why a column cannot serve as ``kind``, else ``None``."""
    leaf = _leaf(feature)
    shown = f"holds {feature}"
    if kind in ("text", "id"):
        ok = leaf is not None and leaf[0] == 0 and (
            _text_dtype(leaf[1]) or (kind == "id" and leaf[1].startswith(("int", "uint")))
        )  # fmt: skip
        return (
            None
            if ok
            else f"{shown}, expected {'strings' if kind == 'text' else 'strings or integers'}"
        )
    if kind == "label":
        ok = leaf is not None and leaf[0] == 0 and _numeric(leaf[1])
        return None if ok else f"{shown}, expected 0/1 integers"
    if kind == "positions":
        ok = leaf is not None and leaf[0] == 1 and _numeric(leaf[1])
        return None if ok else f"{shown}, expected a list of numbers z[N] per row"
    ok = leaf is not None and leaf[0] in (2, 3) and _numeric(leaf[1])
    return None if ok else f"{shown}, expected an array [N, d] or [N, T, d] of numbers per row"


def _label_vector(cells: list[tuple[str, Any]]) -> np.ndarray | str:
    """The row's labels as int64 0/1, or a message naming the first bad cell."""
    values = []
    for column, value in cells:
        if isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1)):
            values.append(int(value))
        else:
            return f"{column} = {value!r}, expected 0 or 1"
    return np.asarray(values, dtype=np.int64)


def _id(value: Any) -> str:
    return str(value).strip() if value is not None else ""


def _empty_saved_splits(path: Path) -> list[str]:
    """Splits of a ``save_to_disk`` folder that hold no data file (``datasets`` fails on them
    with an ``IndexError``); best effort: a folder this cannot parse is left to ``datasets``."""
    try:
        if (path / "dataset_dict.json").is_file():
            splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
            folders = [(name, path / name) for name in splits]
        else:
            folders = [("", path)]
        return [
            name
            for name, folder in folders
            if json.loads((folder / "state.json").read_text()).get("_data_files") == []
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _integer(feature: Any) -> bool:
    """A column of single integers or booleans (what label columns default to)."""
    leaf = _leaf(feature)
    return leaf is not None and leaf[0] == 0 and leaf[1].startswith(("int", "uint", "bool"))


def _words(name: str) -> list[str]:
    return re.findall(r"[a-z]+", name.lower())
