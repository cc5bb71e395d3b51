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
      .lock, .lock.json      who writes the folder now (:meth:`RunDir.lock`)

Checkpoint folders are written atomically by :mod:`graftkit.checkpoint`, every file here through
:mod:`graftkit.io`; :mod:`graftkit.curriculum.carry` fills ``prior/``, ``llm.json`` and
``dataset/``. An evaluation folder is an :class:`EvalDir`: the run's own is the run folder
itself, the others live under ``RUN/eval/``; each knows the run it belongs to, whose history and
config its report reads.

A run folder has one writer at a time: ``graftkit run`` and ``graftkit eval`` hold its lock
(:meth:`RunDir.lock`) while they write; a second one is refused with the folder and the process
that holds it. A lock left by a killed process is taken over, and that is said. Readers
(``graftkit generate``, a report) take no lock: every file is replaced whole, so they never see
a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from graftkit.io import atomic_write_text, writing

#: Keys of a ``history.jsonl`` epoch row that are bookkeeping, not metrics (``best`` repeats the
#: early-stopping series); every other numeric key is a loss term (``train_*``, ``valid_*``) or a
#: callback's column (``gen_f1``, ...).
HISTORY_BOOKKEEPING = ("phase", "epoch", "lr", "seconds", "best")

#: What an evaluation writes into its folder: ``metrics.json`` sections and files. Cleared before
#: the run's own evaluation is written again, so no part of an earlier one survives.
EVALUATION_KEYS = ("eval", "classifier", "ablation", "probe", "ladder")
EVALUATION_FILES = ("generations.jsonl", "grounding.json")


#: The lock file of a run folder (a :class:`filelock.FileLock`) and the record of its holder.
LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.json"
#: Set by a lock holder for the processes it launches (``accelerate launch``): ``LOCKPATH:PID``;
#: they write under their launcher's lock instead of taking it again.
LOCK_ENV = "GRAFTKIT_RUN_LOCK"


class RunDirError(ValueError):
    """A folder that is not (or not yet) what a command needs: no run, no complete phase, an
    evaluation folder already in use. The message names the folder."""


class RunLockedError(RunDirError):
    """Another process holds the run folder's lock; the message names the folder and it."""


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie, which has ended, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return "Z" not in line.split(":", 1)[1].split()[0]
    return True


def _live_here(holder: dict[str, Any]) -> bool:
    """Whether a holder record names a process that runs on this host now (this one included:
    a lock this process holds is held)."""
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and _alive(pid)


def _ended_here(holder: dict[str, Any]) -> bool:
    """Whether a holder record names a process of this host that has ended (a killed holder)."""
    return holder.get("host") == socket.gethostname() and not _live_here(holder)


def describe_holder(holder: dict[str, Any]) -> str:
    """``graftkit run (pid 1234 on gpu01, since 2026-11-30 14:02:11)`` from a holder record."""
    started = holder.get("started")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return (
        f"{holder.get('command', 'a graftkit command')} (pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, since {since})"
    )


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
        """``metrics.json`` (empty when absent); :class:`RunDirError` naming it when damaged."""
        if not self.metrics.is_file():
            return {}
        from graftkit.checkpoint import json_damage

        damage = json_damage(self.metrics)
        if damage is not None:
            raise RunDirError(f"{self.metrics} is {damage}; restore it or remove it")
        metrics = json.loads(self.metrics.read_text())
        if not isinstance(metrics, dict):
            raise RunDirError(f"{self.metrics} does not hold a JSON object")
        return metrics

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

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def lock_holder_file(self) -> Path:
        return self.path / HOLDER_FILE

    # -- one writer at a time ------------------------------------------------------------------
    def lock_holder(self) -> dict[str, Any] | None:
        """Who holds (or, after a kill, last held) the lock: pid, host, command, start time."""
        try:
            holder = json.loads(self.lock_holder_file.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold the folder's lock while the block writes; ``command`` (``graftkit run``) is
        recorded with this process's pid, host and start time for whoever is refused.

        Raises :class:`RunLockedError` naming the holder when another live process holds it. A
        record left by a process that has ended (killed: the operating system released its
        lock) is taken over, and a line says so. Under a multi-process launch one process holds
        it for all: the launcher (``graftkit run`` re-running itself under ``accelerate
        launch``, whose processes inherit :data:`LOCK_ENV`), or the main process (``RANK`` 0)
        of a ``torchrun``; the others write nothing a lock guards.
        """
        token = f"{self.lock_file.resolve()}:"
        inherited = os.environ.get(LOCK_ENV, "")
        holder = self.lock_holder() if inherited.startswith(token) else None
        if (
            holder is not None
            and str(holder.get("pid")) == inherited[len(token) :]
            and _live_here(holder)
        ):
            yield  # the launcher of this process holds it
            return
        if os.environ.get("RANK", "0") != "0":
            yield  # not the main process of a launch
            return
        handle = self._acquire(command)
        previous = os.environ.get(LOCK_ENV)
        os.environ[LOCK_ENV] = f"{token}{os.getpid()}"
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(LOCK_ENV, None)
            else:
                os.environ[LOCK_ENV] = previous
            self._release(handle)

    def _in_use(self, holder: dict[str, Any] | None) -> RunLockedError:
        who = describe_holder(holder) if holder else "another process"
        return RunLockedError(
            f"{self.path} is in use by {who}; one writer at a time: wait for it to end or stop "
            f"it (the lock of a process that has ended is taken over: {self.lock_file})"
        )

    def _named_holder(self, holder: dict[str, Any] | None) -> dict[str, Any] | None:
        """The live holder to name in a refusal. A winner writes its record just after taking
        the lock, so a process refused in that instant waits briefly (at most 2 s) for it."""
        deadline = time.monotonic() + 2.0
        while (holder is None or _ended_here(holder)) and time.monotonic() < deadline:
            time.sleep(0.05)
            holder = self.lock_holder()
        return holder

    def _acquire(self, command: str) -> Any:
        from filelock import FileLock, SoftFileLock, Timeout

        with writing(self.lock_file):
            self.path.mkdir(parents=True, exist_ok=True)
            handle: Any = FileLock(str(self.lock_file), timeout=0)
            try:
                try:
                    handle.acquire()
                except NotImplementedError:  # filelock 3.x where the file system lacks flock
                    handle = SoftFileLock(str(self.lock_file), timeout=0)
                    handle.acquire()
            except Timeout:
                holder = self.lock_holder()
                # a soft lock is stale only when its holder ran here and has ended
                stale = (
                    isinstance(handle, SoftFileLock) and holder is not None and _ended_here(holder)
                )
                if not stale:
                    raise self._in_use(self._named_holder(holder)) from None
                self.lock_file.unlink(missing_ok=True)  # a soft lock its killed holder left
                try:
                    handle.acquire()
                except Timeout:
                    raise self._in_use(self.lock_holder()) from None
            previous = self.lock_holder()
            if previous is not None and _live_here(previous):
                # the lock file was replaced under a live holder: two writers; refuse
                handle.release()
                raise self._in_use(previous)
            me = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": command,
                "started": time.time(),
            }
            try:
                atomic_write_text(self.lock_holder_file, json.dumps(me))
            except BaseException:
                handle.release()
                raise
        if previous is not None and previous.get("pid") != os.getpid():
            gone = (
                "which is no longer running"
                if previous.get("host") == socket.gethostname()
                else "which no longer holds it"
            )
            print(
                f"{command}: {self.path}: took over the lock of {describe_holder(previous)}, "
                f"{gone}",
                file=sys.stderr,
                flush=True,
            )
        return handle

    def _release(self, handle: Any) -> None:
        holder = self.lock_holder()
        if holder is not None and holder.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                self.lock_holder_file.unlink()
        handle.release()

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

    def damaged_phases(self) -> dict[int, str]:
        """Phase folders (``phaseN/``) that exist but fail verification, with what is wrong
        (the damaged file and its damage, :func:`graftkit.checkpoint.damage_of`)."""
        from graftkit.checkpoint import damage_of

        found = {}
        for n in self.phase_numbers():
            if self.phase(n).is_dir():
                damage = damage_of(self.phase(n))
                if damage is not None:
                    found[n] = damage
        return found

    def final_checkpoint(self) -> Path:
        """The checkpoint a run's own evaluation uses: its last complete phase."""
        done = self.complete_phases()
        if not done:
            damaged = self.damaged_phases()
            if damaged:
                raise RunDirError(
                    f"{self.path}: no complete phase checkpoint: {damaged[max(damaged)]}"
                )
            raise RunDirError(
                f"{self.path}: no complete phase checkpoint (phase1, phase2, ...) to evaluate"
            )
        return self.phase(done[-1])

    def recover(self, phases: list[int]) -> None:
        """Finish the checkpoint overwrites a kill interrupted in ``phases``
        (:func:`graftkit.checkpoint.recover_checkpoint`); done again by the engine, harmlessly."""
        from graftkit.checkpoint import recover_checkpoint

        for n in phases:
            recover_checkpoint(self.phase(n))
            recover_checkpoint(self.epoch_checkpoint(n))

    def check_resumable(self, phases: list[int]) -> None:
        """Raise :class:`RunDirError` naming the damaged file when ``--resume`` would continue a
        phase of ``phases`` from an epoch checkpoint that exists but fails verification."""
        from graftkit.checkpoint import damage_of

        for n in phases:
            last = self.epoch_checkpoint(n)
            if self.is_complete(n) or not last.exists():
                continue
            damage = damage_of(last)
            if damage is not None:
                raise RunDirError(
                    f"--resume: {damage}; refusing to resume from it (remove {last} to run "
                    f"phase {n} again from its start)"
                )

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
        """Append one row (an epoch, or an event) to ``history.jsonl``.

        An epoch row replaces the rows of that phase from that epoch on: they are what a
        process ended after writing them and before its epoch checkpoint (killed, or the disk
        full), and ``--resume`` trains those epochs again from the checkpoint. A partial last
        line (a write cut short) is dropped; a failed append leaves the file as it was.
        """
        line = json.dumps(row) + "\n"
        with writing(self.history):
            text = self.history.read_text() if self.history.is_file() else ""
            lines = text.splitlines(keepends=True)
            kept = [old for old in lines if old.endswith("\n") and not _superseded(old, row)]
            if len(kept) != len(lines):
                atomic_write_text(self.history, "".join(kept) + line)
                return
            with self.history.open("a") as fh:
                size = fh.tell()
                try:
                    fh.write(line)
                    fh.flush()
                except BaseException:
                    fh.truncate(size)
                    raise

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


def _superseded(line: str, row: dict[str, Any]) -> bool:
    """Whether history ``line`` is an epoch row of ``row``'s phase from ``row``'s epoch on."""
    if "epoch" not in row:
        return False
    try:
        old = json.loads(line)
    except ValueError:
        return False
    return (
        isinstance(old, dict)
        and "epoch" in old
        and old.get("phase") == row.get("phase")
        and isinstance(old["epoch"], int | float)
        and old["epoch"] >= row["epoch"]
    )


def describe_checkpoint(info: dict[str, Any]) -> str:
    """``phase4 (phase 4, best epoch 1 of 1 run)`` from :meth:`RunDir.checkpoint_info`."""
    text = info["path"]
    if info.get("phase") is not None:
        text += f" (phase {info['phase']}"
        if "epoch" in info:
            text += f", best epoch {info['epoch']} of {info.get('epochs_run', '?')} run"
        text += ")"
    return text
