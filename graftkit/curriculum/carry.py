"""What a run folder carries, so that reopening a finished run (``graftkit eval``, ``generate``,
``run --resume``) trains nothing again, whatever ``GRAFTKIT_CACHE`` (docs/design.md, "The run
folder"):

* the language prior (no ``--llm``): a copy in ``RUN/prior`` (kilobytes to a few MB at the
  profiles' sizes). A reopened run uses it as it is; a run uses it when it is the prior of the
  run's texts and config (the key in its ``prior.json``, :func:`graftkit.lm.prior.prior_cache_key`),
  and otherwise takes the prior from the cache (built if absent) and copies it in. A folder made
  before graftkit kept the copy is reopened from the cache, with a warning that the prior may
  be built again;
* an ``--llm``: nothing is copied (gigabytes). ``RUN/llm.json`` records its path and
  fingerprint (:func:`graftkit.lm.loading.llm_fingerprint`); reopening refuses, in one line, an
  LLM folder that is gone or differs;
* the files the dataset trained (:meth:`graftkit.data.GraftDataset.run_files`, e.g. the digits
  example's row encoder): copies in ``RUN/dataset/`` with their sha256 and the ``data`` settings
  they were made for (``files.json``). They are handed back through
  :meth:`~graftkit.data.GraftDataset.use_run_files` before ``prepare()`` whenever the settings
  are the run's; a copy that is missing or altered is refused in one line.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from graftkit.config import RunConfig
from graftkit.curriculum.model import resolve_llm_path
from graftkit.curriculum.run import echo
from graftkit.io import atomic_file, atomic_write_text
from graftkit.rundir import RunDir, RunDirError

#: ``RUN/dataset/files.json``: ``{"dataset", "data", "files": {name: {"sha256", "bytes"}}}``.
FILES_MANIFEST = "files.json"
#: Data settings that do not change what a dataset makes (where the cache is, loader workers).
NOT_DATA = {"cache_dir", "num_workers"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_identity(cfg: RunConfig) -> dict[str, Any]:
    """The settings a dataset's files depend on: its name and its ``data`` section, less
    :data:`NOT_DATA`."""
    return {
        "dataset": cfg.dataset,
        "data": cfg.data.model_dump(mode="json", exclude=NOT_DATA),
    }


def hand_back_dataset_files(cfg: RunConfig, rundir: RunDir, dataset: Any) -> dict[str, Path]:
    """Give the dataset the run's copies of its trained files (before ``prepare()``) when the run
    folder holds them for the run's data settings; returns what was handed back."""
    manifest = rundir.dataset_files / FILES_MANIFEST
    if not manifest.is_file():
        return {}
    try:
        saved = json.loads(manifest.read_text())
        entries = saved["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunDirError(f"{manifest}: unreadable ({err})") from None
    if {k: saved.get(k) for k in ("dataset", "data")} != data_identity(cfg):
        return {}  # a folder reused with other data settings: the dataset makes its files anew
    files = {}
    for name, entry in entries.items():
        path = rundir.dataset_files / name
        if not path.is_file():
            raise RunDirError(
                f"{path}: missing; the run folder no longer holds the file its dataset trained, "
                "and reopening the run would train it again: restore the run folder from a copy"
            )
        if _sha256(path) != entry.get("sha256"):
            raise RunDirError(
                f"{path}: altered since the run (its sha256 is not the one in {manifest.name}); "
                "restore the run folder from a copy"
            )
        files[name] = path
    if files:
        dataset.use_run_files(dict(files))
    return files


def carry_dataset_files(cfg: RunConfig, rundir: RunDir, dataset: Any, handed_back: dict) -> None:
    """After ``prepare()`` in a run: copy :meth:`~graftkit.data.GraftDataset.run_files` into
    ``RUN/dataset/`` and record their sha256 and the data settings (nothing to do when they were
    handed back from there)."""
    files = dataset.run_files()
    if not files or handed_back:
        return
    folder = rundir.dataset_files
    entries = {}
    for name, source in files.items():
        if not name or Path(name).name != name or name == FILES_MANIFEST:
            raise ValueError(
                f"dataset {cfg.dataset!r}: run_files() name {name!r} must be a plain file name "
                f"other than {FILES_MANIFEST}"
            )
        source = Path(source)
        with atomic_file(folder / name) as staging:
            shutil.copyfile(source, staging)
        entries[name] = {"sha256": _sha256(folder / name), "bytes": source.stat().st_size}
    manifest = {**data_identity(cfg), "files": entries}
    atomic_write_text(folder / FILES_MANIFEST, json.dumps(manifest, indent=2))


def warn_if_not_carried(cfg: RunConfig, rundir: RunDir, dataset: Any, accelerator) -> None:
    """A reopened run whose folder holds no copies of the dataset's trained files (made before
    graftkit kept them): say that they came from the cache, or were trained again."""
    names = list(dataset.run_files())
    if names:
        echo(
            accelerator,
            f"warning: {rundir.path} holds no copy of the dataset's trained file(s) {names} "
            "(made by an older graftkit): they were taken from the cache, or trained again",
        )


def language_model(
    cfg: RunConfig,
    rundir: RunDir,
    dataset: Any,
    accelerator,
    cache: Path,
    progress: Any = None,
    record: bool = True,
) -> Path:
    """The LLM folder the run grafts into: ``--llm`` (fingerprint recorded by a run, checked on
    reopening) or the language prior (the run folder's copy, else the cache's, then copied)."""
    if cfg.model.llm is not None:
        return _pinned_llm(cfg, rundir, accelerator, record)
    from graftkit.lm import build_or_load_prior
    from graftkit.lm.prior import copy_prior, prior_cache_key, prior_key

    own = prior_key(rundir.prior)
    if own is not None and not record:
        return rundir.prior  # a finished run: its own prior, whatever the data now says
    texts = dataset.corpus(cfg.model.prior.corpus)
    if own is not None and own == prior_cache_key(texts, cfg.model.prior):
        return rundir.prior
    if not record:
        echo(
            accelerator,
            f"warning: {rundir.path} holds no copy of its language prior (made by an older "
            f"graftkit): taken from the cache {cache}, or trained again",
        )
    if accelerator.is_main_process:
        path = build_or_load_prior(texts, cfg.model.prior, cache, progress=progress)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        path = build_or_load_prior(texts, cfg.model.prior, cache)
    if record and accelerator.is_main_process:
        copy_prior(path, rundir.prior)
    return path


def _pinned_llm(cfg: RunConfig, rundir: RunDir, accelerator, record: bool) -> Path:
    from graftkit.lm.loading import llm_fingerprint

    if not record:
        path = Path(cfg.model.llm).expanduser()
        if not (path / "config.json").is_file():
            raise RunDirError(
                f"{rundir.config}: model.llm {path} is not a local model directory (no "
                "config.json); the run was trained on that LLM: put it back at that path"
            )
        pin = rundir.llm_fingerprint
        if pin.is_file():
            saved = json.loads(pin.read_text())
            now = llm_fingerprint(path)
            changed = sorted(
                name
                for name in set(now) | set(saved.get("fingerprint", {}))
                if now.get(name) != saved["fingerprint"].get(name)
            )
            if changed:
                raise RunDirError(
                    f"{path}: not the LLM this run was trained on ({pin.name}: "
                    f"{', '.join(changed)} differ); put that LLM back at this path"
                )
        return path
    path = resolve_llm_path(cfg.model.llm)
    if accelerator.is_main_process:
        record_pin = {"path": str(path), "fingerprint": llm_fingerprint(path)}
        atomic_write_text(rundir.llm_fingerprint, json.dumps(record_pin, indent=2))
    return path
