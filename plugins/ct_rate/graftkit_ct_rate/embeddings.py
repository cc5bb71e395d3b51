"""Precomputed slice-embedding files: header checks, memory-mapped opening, finiteness scan.

docs/design.md ("CT-RATE, as its own files lay it out"): one file per volume, ``{stem}.npy`` of shape
``(N, d)`` or ``(N, T, d)`` with token 0 the CLS, or ``.npz`` with key ``embeddings`` (and
optionally ``z_mm``, the slice positions in mm). The DALE-CT authors'
``scripts/ctrate_generate_embeddings.py`` writes the first two exactly (float32 ``(N, 1024)``
CLS only, or ``(N, 1 + P, 1024)`` with patch tokens), so their folders are read as they are;
``graftkit embed`` writes the ``.npz`` form. 50,000 volumes x 600 x 1,024 in float16 is about
60 GB, so nothing here reads more than one volume at a time: ``.npy`` files are memory-mapped and
the header is read without touching the data.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graftkit.data import DataError
from graftkit_ct_rate.layout import EMBEDDING_KEY, POSITIONS_KEY


class EmbeddingError(DataError):
    """An embedding file the run cannot use. ``kind`` is the skip-reason kind, the message names the file."""

    def __init__(self, kind: str, path: Path, detail: str):
        self.kind, self.path, self.detail = kind, Path(path), detail
        super().__init__(f"{kind}: {path}: {detail}")


@dataclass(frozen=True)
class EmbeddingHeader:
    """What the file header says, read without loading the array."""

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    has_positions: bool = False

    @property
    def num_slices(self) -> int:
        return self.shape[0]

    @property
    def dim(self) -> int:
        return self.shape[-1]


def _npy_header(fp, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise EmbeddingError(
            "unreadable embedding", path, f"unsupported .npy format version {version}"
        )
    return tuple(int(s) for s in shape), np.dtype(dtype)


def read_header(path: Path) -> EmbeddingHeader:
    """Shape and dtype from the file header; raises :class:`EmbeddingError` naming the file.

    Checks what can be checked without reading the data: the file opens, holds an array of a
    floating dtype with 2 or 3 axes and at least one slice. Finiteness needs the values
    (:func:`first_nonfinite`).
    """
    path = Path(path)
    has_positions = False
    try:
        if path.suffix == ".npz":
            with zipfile.ZipFile(path) as archive:
                members = set(archive.namelist())
                if f"{EMBEDDING_KEY}.npy" not in members:
                    keys = sorted(m.removesuffix(".npy") for m in members)
                    raise EmbeddingError(
                        "unreadable embedding", path, f"no key {EMBEDDING_KEY!r} (keys: {keys})"
                    )
                has_positions = f"{POSITIONS_KEY}.npy" in members
                with archive.open(f"{EMBEDDING_KEY}.npy") as fp:
                    shape, dtype = _npy_header(fp, path)
        else:
            with open(path, "rb") as fp:
                shape, dtype = _npy_header(fp, path)
    except EmbeddingError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise EmbeddingError("unreadable embedding", path, str(err) or type(err).__name__) from None
    if not np.issubdtype(dtype, np.floating):
        raise EmbeddingError("unreadable embedding", path, f"dtype {dtype} is not floating point")
    if len(shape) not in (2, 3):
        raise EmbeddingError("bad shape", path, f"shape {shape}; expected (N, d) or (N, T, d)")
    if shape[0] == 0 or shape[-1] == 0 or (len(shape) == 3 and shape[1] == 0):
        raise EmbeddingError("bad shape", path, f"shape {shape} holds no slice embedding")
    return EmbeddingHeader(path, shape, dtype, has_positions)


def open_embeddings(path: Path) -> np.ndarray:
    """The slice embeddings ``[N, d]`` of one file, without copying.

    A ``.npy`` comes back as an ``np.memmap`` (for ``(N, T, d)`` files a strided view of token 0,
    the CLS, still backed by the map); an ``.npz`` member cannot be mapped, so that one volume is
    read into memory.
    """
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                array = archive[EMBEDDING_KEY]
        else:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, KeyError, EOFError) as err:
        raise EmbeddingError("unreadable embedding", path, str(err) or type(err).__name__) from None
    return array[:, 0, :] if array.ndim == 3 else array


def open_positions(path: Path) -> np.ndarray | None:
    """The ``z_mm`` array of an ``.npz`` that carries one, else ``None``."""
    path = Path(path)
    if path.suffix != ".npz":
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if POSITIONS_KEY not in archive.files:
                return None
            return np.asarray(archive[POSITIONS_KEY], dtype=np.float64)
    except (OSError, ValueError, TypeError, zipfile.BadZipFile, EOFError) as err:
        raise EmbeddingError("bad positions", path, str(err) or type(err).__name__) from None


def first_nonfinite(array: np.ndarray, chunk: int = 256) -> int | None:
    """Index of the first slice holding NaN/Inf, else ``None``; reads ``chunk`` slices at a time."""
    for start in range(0, array.shape[0], chunk):
        block = np.asarray(array[start : start + chunk])
        finite = np.isfinite(block).reshape(block.shape[0], -1).all(axis=1)
        if not finite.all():
            return start + int(np.flatnonzero(~finite)[0])
    return None
