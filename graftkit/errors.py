"""The command line's error contract: an error caused by input or environment is printed as one
line naming the file, value or key, with exit code 2; anything else is a bug (a traceback).

:class:`CLIError` is the commands' own error for a flag that cannot work; :func:`one_line` turns
any error into that one line, a pydantic validation error (a plugin's options, an encoder's) as
``option KEY: message`` per field, or ``PREFIX.KEY: message`` with ``key=PREFIX``.

A plugin raises :class:`graftkit.config.ConfigError` for options it cannot use (the CLI prints it
as one line, exit code 2) and :class:`graftkit.data.DataError` for an input file it cannot use;
``docs/plugins.md``, "Errors a plugin raises".

Storage faults (a full disk, a read-only or forbidden folder, an I/O error of the device or the
network file system) are :class:`StorageError`: ``PATH: cannot write: No space left on device
(ENOSPC); free space on that file system``. Any code that writes turns the errors of its writes
into one with :func:`graftkit.io.writing` (``with writing(target): ...``), or a single error with
:func:`storage_error`; the safetensors library reports the same faults as its own error type
with the ``os error N`` in its message, which both recognise.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

EXIT_USAGE = 2

#: The storage faults a long job meets, with what to do about each (the rest of an ``OSError``
#: is a bug or another kind of input error and is left as it is).
STORAGE_FAULTS: dict[int, str] = {
    errno.ENOSPC: "free space on that file system",
    errno.EDQUOT: "free space or raise the quota on that file system",
    errno.EROFS: "the file system is mounted read-only; write somewhere else",
    errno.EACCES: "this user may not write there; choose a folder you can write",
    errno.EPERM: "this user may not write there; choose a folder you can write",
    errno.EIO: "the device or network file system failed; check it before writing there again",
    errno.ESTALE: "the network file system lost the file (stale handle); remount it, then retry",
}

#: how the safetensors library (Rust) reports an operating-system error in its messages
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class StorageError(OSError):
    """A write that the storage refused: the path, the cause and what to do, in one line.

    An ``OSError`` (``errno``, ``strerror``, ``filename``) so that code catching ``OSError``
    keeps working; :attr:`hint` may be extended by a caller that knows more (``graftkit run``
    adds that ``--resume`` continues from the last complete checkpoint).
    """

    def __init__(self, code: int, path: Path | str, action: str = "write"):
        super().__init__(code, os.strerror(code), str(path))
        self.action = action
        self.hint = STORAGE_FAULTS.get(code, "")

    def __str__(self) -> str:
        name = errno.errorcode.get(self.errno, str(self.errno))
        text = f"{self.filename}: cannot {self.action}: {self.strerror} ({name})"
        return f"{text}; {self.hint}" if self.hint else text


def error_number(err: BaseException) -> int | None:
    """The operating-system error number behind ``err`` (an ``OSError``, or a library error
    that carries one in its message, as safetensors' does), following its causes."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current.errno
        match = _RUST_OS_ERROR.search(str(current))
        if match:
            return int(match.group(1))
        current = current.__cause__ or current.__context__
    return None


def storage_error(
    err: BaseException, path: Path | str | None, action: str = "write"
) -> StorageError | None:
    """``err`` as a :class:`StorageError` naming ``path`` (default: the error's own file name)
    when it is a storage fault (:data:`STORAGE_FAULTS`), else ``None``."""
    if isinstance(err, StorageError):
        return err
    code = error_number(err)
    if code not in STORAGE_FAULTS:
        return None
    where = path if path is not None else getattr(err, "filename", None)
    return StorageError(code, where if where is not None else "(unknown path)", action)


def one_line(err: BaseException, key: str | None = None) -> str:
    """``err`` as one line: an ``OSError`` as ``PATH: reason``, a pydantic ``ValidationError`` as
    ``option KEY: message; ...`` (a key the model does not have: ``unknown option KEY``; with
    ``key``, e.g. ``"data.synth"``: ``data.synth.KEY: message``), anything else its message with
    the lines joined."""
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        parts = []
        for e in err.errors():
            msg = e["msg"].removeprefix("Value error, ")
            where = ".".join(map(str, e["loc"]))
            if key is not None:
                where = f"{key}.{where}" if where else key
                unknown = e["type"] == "extra_forbidden"
                parts.append(f"{where}: unknown option" if unknown else f"{where}: {msg}")
            elif e["type"] == "extra_forbidden" and where:
                parts.append(f"unknown option {where}")
            else:
                parts.append(f"option {where}: {msg}" if where else msg)
        return "; ".join(parts)
    if isinstance(err, StorageError):
        text = str(err)
    elif isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())
