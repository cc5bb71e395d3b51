"""The run folder contract: :class:`RunDir` owns every path and file of a run, and the queries on
them; nothing else in graftkit builds those paths (docs/design.md, "The run folder").

::

    RUN/
      config.yaml            the resolved config (graftkit run --config RUN/config.yaml repeats it)
      history.jsonl          one row per epoch (HISTORY_BOOKKEEPING keys + train_* / valid_* terms
                             + callback columns such as gen_f1), and events ({"event": ...})
      collapse.jsonl         the collapse monitor's history
      metrics.json           data summary, phases, timing, oracle, prevalence + the evaluation
      textspace/             the whitened text space (fitted once; resume reuses it)
      prior/                 the language prior the run grafted into (a copy), when no --llm
      llm.json               with --llm: its path and fingerprint, checked when the run reopens
      dataset/               the files the dataset trained (GraftDataset.run_files) + files.json
      phase{N}/              phase N's final checkpoint (best epoch's bridge; peft under pretrained/)
      checkpoints/phase{N}/last   phase N's per-epoch resume checkpoint
      generations.jsonl, grounding.json, report.html, plots/    the run's own evaluation
      eval/NAME/             any other evaluation (same files, a metrics.json of its own)
      accelerate_config.yaml, tensorboard/                      launch and tracking

Checkpoint folders are written atomically by :mod:`graftkit.checkpoint`, every file here through
:mod:`graftkit.io`; :mod:`graftkit.curriculum.carry` fills ``prior/``, ``llm.json`` and
``dataset/``. An evaluation folder is an :class:`EvalDir`: the run's own is the run folder
itself, the others live under ``RUN/eval/``; each knows the run it belongs to, whose history and
config its report reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from graftkit.io import atomic_write_text

#: Keys of a ``history.jsonl`` epoch row that are bookkeeping, not metrics (``best`` repeats the
#: early-stopping series); every other numeric key is a loss term (``train_*``, ``valid_*``) or a
#: callback's column (``gen_f1``, ...).
HISTORY_BOOKKEEPING = ("phase", "epoch", "lr", "seconds", "best")

#: What an evaluation writes into its folder: ``metrics.json`` sections and files. Cleared before
#: the run's own evaluation is written again, so no part of an earlier one survives.
EVALUATION_KEYS = ("eval", "classifier", "ablation", "probe", "ladder")
EVALUATION_FILES = ("generations.jsonl", "grounding.json")


class RunDirError(ValueError):
    """A folder that is not (or not yet) what a command needs: no run, no complete phase, an
    evaluation folder already in use. The message names the folder."""


class EvalDir:
    """Where one evaluation of a run is written: ``metrics.json``, ``generations.jsonl``,
    ``grounding.json``, ``report.html`` and ``plots/``."""

    def __init__(self, path: Path | str, run: RunDir):
        self.path = Path(path)
        self.run = run

    @property
    def is_run_folder(self) -> bool:
        """Whether this is the run's own evaluation (written into the run folder itself)."""
        return self.path.resolve() == self.run.path.resolve()

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def generations(self) -> Path:
        return self.path / "generations.jsonl"

    @property
    def grounding(self) -> Path:
        return self.path / "grounding.json"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def read_metrics(self) -> dict[str, Any]:
        return json.loads(self.metrics.read_text()) if self.metrics.is_file() else {}

    def update_metrics(self, update: dict[str, Any]) -> None:
        """Merge ``update`` into ``metrics.json`` (sections one level deep), atomically."""
        metrics = self.read_metrics()
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(metrics.get(key), dict):
                metrics[key].update(value)
            else:
                metrics[key] = value
        atomic_write_text(self.metrics, json.dumps(metrics, indent=2))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_text(self.metrics, json.dumps(metrics, indent=2))

    def clear(self) -> None:
        """Remove an earlier evaluation (its ``metrics.json`` sections and files)."""
        metrics = self.read_metrics()
        if any(key in metrics for key in EVALUATION_KEYS):
            for key in EVALUATION_KEYS:
                metrics.pop(key, None)
            self.write_metrics(metrics)
        for name in EVALUATION_FILES:
            (self.path / name).unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"EvalDir({str(self.path)!r})"


class RunDir(EvalDir):
    """A run folder (module docstring): its paths, its files and the queries on them.

    It is also the run's own :class:`EvalDir`.
    """

    def __init__(self, path: Path | str):
        super().__init__(path, self)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- paths ---------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def history(self) -> Path:
        return self.path / "history.jsonl"

    @property
    def collapse(self) -> Path:
        return self.path / "collapse.jsonl"

    @property
    def textspace(self) -> Path:
        return self.path / "textspace"

    @property
    def prior(self) -> Path:
        """The run's own copy of the language prior it grafted into (no ``--llm``)."""
        return self.path / "prior"

    @property
    def llm_fingerprint(self) -> Path:
        """With ``--llm``: the LLM folder's path and fingerprint, checked when the run reopens."""
        return self.path / "llm.json"

    @property
    def dataset_files(self) -> Path:
        """Copies of the files the dataset trained (``GraftDataset.run_files``) and their sha256
        (``files.json``)."""
        return self.path / "dataset"

    @property
    def accelerate_config(self) -> Path:
        return self.path / "accelerate_config.yaml"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def phase(self, number: int) -> Path:
        """Phase ``number``'s final checkpoint folder."""
        return self.path / f"phase{number}"

    def epoch_checkpoint(self, number: int) -> Path:
        """Phase ``number``'s per-epoch resume checkpoint."""
        return self.path / "checkpoints" / f"phase{number}" / "last"

    def evaluation(self, name: str) -> EvalDir:
        """``RUN/eval/NAME``; ``name`` must be a plain folder name."""
        folder = self.path / "eval" / name
        if not name or folder.resolve().parent != (self.path / "eval").resolve():
            raise RunDirError(f"--name {name}: must be a plain folder name")
        return EvalDir(folder, self)

    # -- queries -------------------------------------------------------------------------------
    def holds_run(self) -> bool:
        """Whether a run was started here (``metrics.json`` and a phase folder)."""
        return self.metrics.exists() and any(self.path.glob("phase*"))

    def phase_numbers(self) -> list[int]:
        """The phase numbers the folder has folders for (``phaseN/`` or ``checkpoints/phaseN``)."""
        names = [p.name for p in [*self.path.glob("phase*"), *self.path.glob("checkpoints/phase*")]]
        return sorted({int(n[5:]) for n in names if n[5:].isdigit()})

    def is_complete(self, number: int) -> bool:
        """Whether phase ``number``'s final checkpoint is complete (every checksum holds)."""
        from graftkit.checkpoint import is_complete

        return is_complete(self.phase(number))

    def complete_phases(self, numbers: list[int] | None = None) -> list[int]:
        """Of ``numbers`` (default: every phase folder here), those with a complete checkpoint."""
        return [
            n for n in (self.phase_numbers() if numbers is None else numbers) if self.is_complete(n)
        ]

    def unfinished_phases(self) -> list[int]:
        """Phases that were started (``checkpoints/phaseN``) but have no complete ``phaseN/``."""
        return [
            n
            for n in self.phase_numbers()
            if self.epoch_checkpoint(n).parent.exists() and not self.is_complete(n)
        ]

    def final_checkpoint(self) -> Path:
        """The checkpoint a run's own evaluation uses: its last complete phase."""
        done = self.complete_phases()
        if not done:
            raise RunDirError(
                f"{self.path}: no complete phase checkpoint (phase1, phase2, ...) to evaluate"
            )
        return self.phase(done[-1])

    def resolve_checkpoint(self, checkpoint: str | None) -> Path:
        """``--checkpoint``: a path, or a folder of this run (``phase3``); default the final one."""
        if not checkpoint:
            return self.final_checkpoint()
        path = Path(checkpoint) if Path(checkpoint).exists() else self.path / checkpoint
        if not path.exists():
            raise RunDirError(
                f"--checkpoint {checkpoint}: no such checkpoint (in {self.path} or as a path)"
            )
        return path

    def read_config(self, **overrides: Any):
        """The run's resolved config (``RUN/config.yaml``), with dotted ``overrides``."""
        from graftkit.config import ConfigError, build_config, load_yaml

        if not self.config.is_file():
            raise RunDirError(f"{self.path}: not a graftkit run directory (no config.yaml)")
        tree = load_yaml(self.config)
        try:
            return build_config(tree["dataset"], tree, overrides)
        except (ConfigError, KeyError) as err:
            raise RunDirError(f"{self.config}: {err}") from None

    # -- history -------------------------------------------------------------------------------
    def append_history(self, row: dict[str, Any]) -> None:
        """Append one row (an epoch, or an event) to ``history.jsonl``."""
        with self.history.open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    def history_rows(self) -> list[dict[str, Any]]:
        """The readable rows of ``history.jsonl`` (none when it is absent)."""
        if not self.history.is_file():
            return []
        rows = []
        for line in self.history.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def checkpoint_info(self, checkpoint: Path) -> dict[str, Any]:
        """Which checkpoint a model came from: its path (relative to the run when inside it),
        phase, and the epoch its weights are from.

        A phase checkpoint keeps the best epoch's bridge; the epoch is read from the history
        (the first epoch whose running best equals the checkpoint's best), 1-based as printed.
        """
        checkpoint = Path(checkpoint)
        try:
            shown = str(checkpoint.resolve().relative_to(self.path.resolve()))
        except ValueError:
            shown = str(checkpoint)
        info: dict[str, Any] = {"path": shown}
        try:
            state = json.loads((checkpoint / "state.json").read_text())
        except (OSError, ValueError):
            return info
        phase = state.get("phase")
        info["phase"] = phase
        rows = [r for r in self.history_rows() if r.get("phase") == phase and "epoch" in r]
        if rows:
            # runs of older versions logged 0-based epochs
            shift = 1 if min(int(r["epoch"]) for r in rows) == 0 else 0
            info["epochs_run"] = max(int(r["epoch"]) for r in rows) + shift
            best = [r["epoch"] for r in rows if r.get("best") == state.get("best")]
            if best:
                info["epoch"] = int(best[0]) + shift
        return info


def describe_checkpoint(info: dict[str, Any]) -> str:
    """``phase4 (phase 4, best epoch 1 of 1 run)`` from :meth:`RunDir.checkpoint_info`."""
    text = info["path"]
    if info.get("phase") is not None:
        text += f" (phase {info['phase']}"
        if "epoch" in info:
            text += f", best epoch {info['epoch']} of {info.get('epochs_run', '?')} run"
        text += ")"
    return text
