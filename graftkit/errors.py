"""The command line's error contract: an error caused by input or environment is printed as one
line naming the file, value or key, with exit code 2; anything else is a bug (a traceback).

:class:`CLIError` is the commands' own error for a flag that cannot work; :func:`one_line` turns
any error into that one line, a pydantic validation error (a plugin's options, an encoder's) as
``option KEY: message`` per field, or ``PREFIX.KEY: message`` with ``key=PREFIX``.

A plugin raises :class:`graftkit.config.ConfigError` for options it cannot use (the CLI prints it
as one line, exit code 2) and :class:`graftkit.data.DataError` for an input file it cannot use;
``docs/plugins.md``, "Errors a plugin raises".
"""

from __future__ import annotations

EXIT_USAGE = 2


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


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
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())
