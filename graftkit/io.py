"""Atomic writes: a file or a folder is complete or absent, never half-written.

Everything graftkit writes that another process (or a resumed run) may read is written to a
temporary sibling and renamed into place with :func:`os.replace`, which is atomic within one
file system. A killed writer leaves at most a hidden temporary (``.NAME.tmp-PID-RANDOM``) that
nothing reads; :func:`remove_stale_temporaries` clears those under a lock.

* :func:`atomic_write_text` / :func:`atomic_write_bytes`: one file, in one call;
* :func:`atomic_file`: a path to write a file to with any writer (``np.save``, ``torch.save``);
* :func:`atomic_dir`: a folder built file by file, renamed into place when complete.

A write the storage refuses (a full disk, a read-only or forbidden folder, an I/O error) raises
:class:`graftkit.errors.StorageError` naming the target and the cause (:func:`writing`), and the
target is left as it was.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from graftkit.errors import StorageError, storage_error

__all__ = [
    "atomic_dir",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_text",
    "remove_stale_temporaries",
    "temporary_sibling",
    "writing",
]


@contextmanager
def writing(target: Path | str, action: str = "write") -> Iterator[None]:
    """Turn a storage fault raised in the block (``ENOSPC``, ``EDQUOT``, ``EROFS``, ``EACCES``,
    ``EPERM``, ``EIO``; from ``open``/``write``, numpy, or safetensors' own error type) into one
    :class:`~graftkit.errors.StorageError` naming ``target``; any other error passes unchanged.

    ``target`` is what the caller writes (a checkpoint folder, ``metrics.json``), not the hidden
    temporary the bytes go to first, so the message names the file a user knows.
    """
    try:
        yield
    except StorageError:
        raise
    except Exception as err:
        fault = storage_error(err, target, action)
        if fault is None:
            raise
        raise fault from err


def temporary_sibling(target: Path | str) -> Path:
    """A fresh hidden name beside ``target``: ``.NAME.tmp-PID-RANDOM`` (same file system)."""
    target = Path(target)
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_stale_temporaries(target: Path | str) -> list[Path]:
    """Delete the temporaries of ``target`` left by killed writers; returns what was removed.

    Only safe while no other writer of ``target`` can be running: call it under the lock that
    serialises those writers (e.g. a :class:`filelock.FileLock`).
    """
    target = Path(target)
    removed = []
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextmanager
def atomic_file(target: Path | str, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path; when the block succeeds, that file replaces ``target``.

    The caller writes the whole file to the yielded path (any writer that takes a path). On an
    exception the temporary is deleted and ``target`` is left as it was. ``fsync=True`` flushes
    the data to disk before the rename (for files that must survive a power loss).
    """
    target = Path(target)
    tmp = temporary_sibling(target)
    try:
        with writing(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            if fsync:
                _fsync(tmp)
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(target: Path | str, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``target`` atomically; returns ``target``."""
    with atomic_file(target, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(
    target: Path | str, text: str, *, encoding: str = "utf-8", fsync: bool = False
) -> Path:
    """Write ``text`` to ``target`` atomically; returns ``target``."""
    return atomic_write_bytes(target, text.encode(encoding), fsync=fsync)


@contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield a fresh temporary folder; when the block succeeds it is renamed to ``target``.

    ``target`` must not exist, or be an empty folder. If another writer renamed its own complete
    folder into place first (two processes building the same cache entry), that one is kept and
    this one is discarded: the block's caller then finds ``target`` complete. On an exception the
    temporary folder is deleted.
    """
    target = Path(target)
    tmp = temporary_sibling(target)
    try:
        with writing(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            yield tmp
            if target.is_dir() and not any(target.iterdir()):
                target.rmdir()
            try:
                os.replace(tmp, target)
            except OSError:
                if not target.is_dir():  # not a concurrent writer that got there first
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def decode_utf8(raw: bytes, path: Path | str) -> str:
    """``raw`` as UTF-8 text (a BOM allowed); a byte that is not UTF-8 raises ``ValueError``
    naming the file, the byte, its offset and line, so the file can be fixed rather than guessed."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: not UTF-8: byte 0x{raw[err.start]:02x} at byte offset {err.start} "
            f"(line {line}); save the file as UTF-8"
        ) from None


def read_csv(path: Path | str) -> tuple[list[dict[str, str]], list[str]]:
    """The rows and columns of a UTF-8 CSV (a BOM is dropped); ``ValueError`` naming the file and,
    for a byte that is not UTF-8, its offset and line. Fields may exceed csv's 131,072 characters
    (long reports)."""
    import csv
    import sys

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, expected a CSV file")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: {err.strerror or err}") from None
    text = decode_utf8(raw, path)
    try:
        reader = csv.DictReader(text.splitlines(keepends=True))
        rows = list(reader)
        columns = reader.fieldnames or []
    except csv.Error as err:
        raise ValueError(f"{path}: not a readable CSV ({err})") from None
    if not columns:
        raise ValueError(f"{path}: empty file (no header row)")
    return rows, list(columns)
