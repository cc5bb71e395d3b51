"""Posterior-collapse monitor for the generation phases (docs/design.md "Evaluation").

A grafted decoder can learn to write plausible reports while ignoring the visual tokens (the
paper's phase-3 collapse on raw narratives). Each epoch of phases 3 and 4 the trainer generates on
a fixed small validation subset twice, with the real and with zeroed visual tokens, and feeds both
macro F1s to :class:`CollapseMonitor`. The visual-reliance ratio

    reliance = (F1_real − F1_zero) / F1_real

is the fraction of generation F1 that the visual tokens are responsible for (paper: zeroing
removes 56.6 % of F1 after phase 3, 44.9 % after phase 4). When F1_real = 0 the ratio is defined
as 0: a model that scores nothing with real tokens shows no evidence of reading them. It is
negative when zeroed tokens score higher than real ones.

Collapse is a decoder that *stops* reading the visual tokens. One that has not read them yet
(reliance <= 0 in every epoch so far: zeroed tokens score as well as real ones, as after a
smoke-sized run that is too short to learn) has not collapsed: the monitor notes that once per
phase (``notes`` in the row) instead of warning every epoch, and warns about the floor as soon
as the decoder has shown any reliance (> 0) at all.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_ROW_FIELDS = ("phase", "epoch", "f1_real", "f1_zero", "reliance", "reliance_floor", "warnings")


def visual_reliance(f1_real: float, f1_zero: float) -> float:
    """(F1_real − F1_zero) / F1_real, and 0 when F1_real is 0 (module docstring)."""
    if f1_real == 0:
        return 0.0
    return (f1_real - f1_zero) / f1_real


def _check_f1(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return value


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON-lines objects of ``path`` (blank lines skipped); errors name the file and line."""
    rows = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {row!r}")
        rows.append(row)
    return rows


class CollapseMonitor:
    """Tracks generation F1 with real vs zeroed visual tokens and warns about posterior collapse.

    Warnings (returned by :meth:`update` and logged):

    * F1 (real tokens) fell for two epochs running within the same phase
      (``f1[e-2] > f1[e-1] > f1[e]``);
    * the visual-reliance ratio is below ``reliance_floor`` (``EvalConfig.reliance_floor``),
      once the decoder has shown some reliance (> 0) in an epoch of the run; before that, the
      first such epoch of each phase gets a note that it does not read the tokens yet
      (module docstring).

    ``history`` holds one dict per update: ``phase, epoch, f1_real, f1_zero, reliance,
    reliance_floor, warnings, notes``; it round-trips through :meth:`to_jsonl` /
    :meth:`from_jsonl` (``RUN/collapse.jsonl``, plotted by the run report).
    """

    def __init__(self, reliance_floor: float = 0.2):
        if not (math.isfinite(reliance_floor) and 0.0 <= reliance_floor <= 1.0):
            raise ValueError(f"reliance_floor must be in [0, 1], got {reliance_floor!r}")
        self.reliance_floor = float(reliance_floor)
        self.history: list[dict[str, Any]] = []

    def _phase_rows(self, phase: int) -> list[dict[str, Any]]:
        return [row for row in self.history if row["phase"] == phase]

    def update(
        self, phase: int, epoch: int, f1_real: float, f1_zero: float, log_warnings: bool = True
    ) -> list[str]:
        """Record one epoch's F1 pair and return the warnings it raises (empty list if none);
        with ``log_warnings`` they are also logged (``graftkit.eval.collapse``, level WARNING)."""
        if isinstance(phase, bool) or not isinstance(phase, int):
            raise TypeError(f"phase must be an int, got {phase!r}")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        f1_real = _check_f1(f1_real, "f1_real")
        f1_zero = _check_f1(f1_zero, "f1_zero")
        previous = self._phase_rows(phase)
        if previous and epoch <= previous[-1]["epoch"]:
            raise ValueError(
                f"phase {phase} epoch {epoch} is not after the last recorded epoch "
                f"{previous[-1]['epoch']} of that phase"
            )

        reliance = visual_reliance(f1_real, f1_zero)
        warnings: list[str] = []
        notes: list[str] = []
        if len(previous) >= 2:
            older, last = previous[-2]["f1_real"], previous[-1]["f1_real"]
            if older > last > f1_real:
                warnings.append(
                    f"phase {phase} epoch {epoch}: generation F1 (real tokens) fell for two epochs "
                    f"running ({older:.3f} -> {last:.3f} -> {f1_real:.3f}); possible posterior collapse"
                )
        not_yet = reliance <= 0 and all(row["reliance"] <= 0 for row in self.history)
        if reliance < self.reliance_floor and not_yet:
            if not any(row.get("notes") for row in previous):
                notes.append(
                    f"phase {phase} epoch {epoch}: the decoder does not read the visual tokens "
                    f"yet (F1 real {f1_real:.3f}, zeroed {f1_zero:.3f}); not a collapse: the "
                    f"reliance floor {self.reliance_floor:.2f} is checked once it has"
                )
        elif reliance < self.reliance_floor:
            warnings.append(
                f"phase {phase} epoch {epoch}: visual reliance {reliance:.3f} is below the floor "
                f"{self.reliance_floor:.3f} (F1 real {f1_real:.3f}, zeroed {f1_zero:.3f}); "
                "the decoder may be ignoring the visual tokens"
            )
        for message in warnings if log_warnings else ():
            log.warning(message)
        self.history.append(
            {
                "phase": phase,
                "epoch": epoch,
                "f1_real": f1_real,
                "f1_zero": f1_zero,
                "reliance": reliance,
                "reliance_floor": self.reliance_floor,
                "warnings": warnings,
                "notes": notes,
            }
        )
        return warnings

    def to_jsonl(self, path: str | Path) -> Path:
        """Write ``history`` as one JSON object per line, replacing ``path`` whole (a reader, or a
        resumed run, never sees half of it)."""
        from graftkit.io import atomic_write_text

        path = Path(path)
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in self.history))
        return path

    @classmethod
    def from_jsonl(cls, path: str | Path, reliance_floor: float | None = None) -> CollapseMonitor:
        """Rebuild a monitor from :meth:`to_jsonl` output, e.g. to resume monitoring.

        ``reliance_floor`` defaults to the floor stored in the file's last row (0.2 if empty).
        """
        path = Path(path)
        rows = read_jsonl(path)
        for lineno, row in enumerate(rows, start=1):
            missing = [f for f in _ROW_FIELDS if f not in row]
            if missing:
                raise ValueError(f"{path}:{lineno}: collapse row lacks fields {missing}")
        floor = (
            reliance_floor
            if reliance_floor is not None
            else (float(rows[-1]["reliance_floor"]) if rows else 0.2)
        )
        monitor = cls(reliance_floor=floor)
        monitor.history = rows
        return monitor
