"""The encoder interface: one volume (or signal) -> per-slice embeddings ``[N, d]`` and ``z_mm[N]``.

An encoder owns its inputs: which files (or folders) under ``graftkit embed --input`` it reads
(:meth:`Encoder.discover_inputs`), what each output is named (:meth:`Encoder.input_stem`) and any
reader options (its ``--option KEY=VALUE`` settings). The core knows no file format.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np


@dataclass
class EncodedVolume:
    """Slice embeddings ``[N, d]`` (float32) and physical positions ``z_mm[N]`` of one input."""

    embeddings: np.ndarray
    z_mm: np.ndarray


def find_inputs(
    dir_or_files: str | Path | Iterable[str | Path],
    select: Callable[[Path, list[str]], Iterable[Path]],
) -> list[Path]:
    """Paths named explicitly, plus what ``select(folder, names)`` picks in each folder below the
    folders named (``names``: its non-hidden files), sorted and without duplicates.

    The walk shared by every encoder's :meth:`Encoder.discover_inputs`; ``select`` may return
    files or the folder itself (e.g. a folder of DICOM slices is one input). Raises
    ``FileNotFoundError`` naming a path that does not exist.
    """
    if isinstance(dir_or_files, (str, Path)):
        dir_or_files = [dir_or_files]
    found: set[Path] = set()
    for item in dir_or_files:
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist")
        if not path.is_dir():
            found.add(path)
            continue
        for folder, dirs, names in os.walk(path):
            dirs.sort()
            visible = sorted(n for n in names if not n.startswith("."))
            found.update(select(Path(folder), visible))
    return sorted(found)


class Encoder(ABC):
    """A frozen self-supervised encoder, registered through ``register_encoders``.

    Class attributes declare what the encoder is: its output ``dim``, the ``preprocessing`` it
    expects its input to have had, and where its ``weights_source`` comes from.
    """

    name: ClassVar[str] = ""
    dim: ClassVar[int] = 0
    preprocessing: ClassVar[str] = ""
    weights_source: ClassVar[str] = ""
    #: File-name endings of the inputs (``(".npy",)``, ``(".nii.gz", ".nii")``, ...): the files
    #: :meth:`discover_inputs` takes from a folder, stripped by :meth:`input_stem`. Empty: every
    #: file. An encoder whose inputs are not single files (a DICOM series folder) overrides both.
    input_suffixes: ClassVar[tuple[str, ...]] = ()
    #: What the inputs are, for the message when a folder holds none (default: the suffixes).
    input_description: ClassVar[str] = ""
    #: Slices per forward pass; ``graftkit embed --batch-size`` sets it.
    batch_size: int = 16

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", **options):
        self.weights = Path(weights) if weights is not None else None
        self.device = device
        self.options = options

    @classmethod
    def accepts(cls, path: Path) -> bool:
        """Whether a file found in an ``--input`` folder is one of this encoder's inputs."""
        name = path.name.lower()
        return not cls.input_suffixes or name.endswith(tuple(s.lower() for s in cls.input_suffixes))

    @classmethod
    def discover_inputs(cls, dir_or_files: str | Path | Iterable[str | Path]) -> list[Path]:
        """Expand ``graftkit embed --input`` into this encoder's inputs, sorted, no duplicates.

        A path named explicitly is taken as is; a folder is searched recursively for files that
        :meth:`accepts` (hidden files are left out). Raises ``FileNotFoundError`` naming a path
        that does not exist.
        """
        return find_inputs(
            dir_or_files,
            lambda folder, names: [folder / n for n in names if cls.accepts(folder / n)],
        )

    @classmethod
    def input_stem(cls, path: Path) -> str:
        """The output name of an input (``{stem}.npz``): its name less the longest matching
        :attr:`input_suffixes` ending."""
        name = Path(path).name
        for suffix in sorted(cls.input_suffixes, key=len, reverse=True):
            if name.lower().endswith(suffix.lower()):
                return name[: -len(suffix)]
        return name

    @classmethod
    def describe_inputs(cls) -> str:
        """What :meth:`discover_inputs` looks for, in words."""
        if cls.input_description:
            return cls.input_description
        if cls.input_suffixes:
            return "files ending " + ", ".join(cls.input_suffixes)
        return "files"

    @abstractmethod
    def encode(self, path: Path) -> EncodedVolume:
        """Read one input file (or folder) and return its slice embeddings and positions."""
