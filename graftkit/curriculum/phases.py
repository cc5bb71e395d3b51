"""Phase selection (``--phases 1-4``) and the per-phase view of the declared config."""

from __future__ import annotations

import re

from graftkit.config import ConfigError

PHASE_NUMBERS = (1, 2, 3, 4)


def parse_phase_range(spec: str) -> list[int]:
    """``"1-4"`` -> ``[1, 2, 3, 4]``; ``"3"`` -> ``[3]``; ``"5-2"`` is refused with a clear message."""
    match = re.fullmatch(r"\s*(\d)\s*(?:-\s*(\d)\s*)?", spec)
    if not match:
        raise ConfigError(f"--phases {spec!r}: expected N or N-M with phases 1-4, e.g. 1-4, 3, 2-3")
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if first not in PHASE_NUMBERS or last not in PHASE_NUMBERS:
        raise ConfigError(f"--phases {spec!r}: phases are numbered 1-4")
    if last < first:
        raise ConfigError(
            f"--phases {spec!r}: the range runs backwards; did you mean {last}-{first}?"
        )
    return list(range(first, last + 1))
