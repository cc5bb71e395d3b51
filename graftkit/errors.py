"""The command line's error contract: an error caused by input or environment is printed as one
line naming the file, value or key, with exit code 2; anything else is a bug (a traceback).

:class:`CLIError` is the commands' own error for a flag that cannot work; :func:`one_line` turns
any error into that one line, a pydantic validation error (a plugin's options, an encoder's) as
``option KEY: message`` per field.
"""

from __future__ import annotations

EXIT_USAGE = 2


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def one_line(err: BaseException) -> str:
    """``err`` as one line: an ``OSError`` as ``PATH: reason``, a pydantic ``ValidationError`` as
    ``option KEY: message; ...``, anything else its message with the lines joined."""
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        parts = []
        for e in err.errors():
            msg = e["msg"].removeprefix("Value error, ")
            where = ".".join(map(str, e["loc"]))
            parts.append(f"option {where}: {msg}" if where else msg)
        return "; ".join(parts)
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())
