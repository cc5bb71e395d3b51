"""Phase selection (``--phases 1-4``) against the curriculum's declared phases."""

from __future__ import annotations

import re

from graftkit.config import ConfigError


def parse_phase_range(spec: str, count: int = 4) -> list[int]:
    """``"1-4"`` -> ``[1, 2, 3, 4]``; ``"3"`` -> ``[3]``; ``"5-2"`` is refused with a clear message.

    ``count`` is the number of phases the curriculum declares (phases are numbered 1..count).
    """
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", spec)
    if not match:
        raise ConfigError(
            f"--phases {spec!r}: expected N or N-M with phases 1-{count}, e.g. 1-{count}, 3, 2-3"
        )
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if not (1 <= first <= count and 1 <= last <= count):
        raise ConfigError(f"--phases {spec!r}: phases are numbered 1-{count}")
    if last < first:
        raise ConfigError(
            f"--phases {spec!r}: the range runs backwards; did you mean {last}-{first}?"
        )
    return list(range(first, last + 1))
