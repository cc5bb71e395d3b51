"""Atomic safetensors checkpoints with a checksummed manifest (no pickle anywhere).

A checkpoint is a folder: ``model.safetensors`` (bridge tensors), ``optimizer.safetensors``
(flattened optimiser/scheduler tensors), ``extra.safetensors`` (RNG states, EWC snapshot, ...),
``state.json`` (epoch, best metric, everything that is not a tensor) and ``manifest.json``
(sha256 of every file). It is written to a temporary sibling folder and renamed into place. A
folder cannot replace another in one rename, so overwriting takes two (old folder aside, new one
in); a writer killed between them leaves no checkpoint under its name but a complete new one
beside it, which :func:`recover_checkpoint` renames into place (roll forward), falling back to the
previous one. A writer killed earlier leaves an incomplete ``.tmp-*`` folder that is ignored.

What is written is always full tensors: under FSDP the parameters and the optimiser state are
sharded (DTensors); the writer gathers them first and a reader lays a loaded full tensor out as
the parameter it goes into (:mod:`graftkit.distributed`), so a checkpoint is the same file
whatever the number of processes or the distributed type.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, partial, corrupted or from a different architecture."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save_checkpoint(
    directory: Path,
    tensors: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
    extra_files: dict[str, str] | None = None,
    writer: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``{name}.safetensors`` for each tensor group plus ``state.json``, atomically."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{directory.name}-", dir=directory.parent))
    try:
        files: dict[str, str] = {}
        for name, group in tensors.items():
            save_file(_contiguous(group), str(tmp / f"{name}.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, indent=2, default=str))
        for fname, text in (extra_files or {}).items():
            (tmp / fname).write_text(text)
        if writer is not None:
            writer(tmp)
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                files[str(path.relative_to(tmp))] = _sha256(path)
                with path.open("rb") as fh:
                    os.fsync(fh.fileno())
        (tmp / MANIFEST).write_text(json.dumps({"files": files}, indent=2))
        if directory.exists():
            old = directory.with_name(f".old-{directory.name}-{os.getpid()}")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def recover_checkpoint(directory: Path) -> bool:
    """Finish an overwrite that :func:`save_checkpoint` was killed in the middle of.

    If ``directory`` is missing, the newest complete ``.tmp-NAME-*`` sibling (written in full,
    manifest last, before the renames began) becomes ``directory``; failing that, the complete
    previous checkpoint set aside as ``.old-NAME-*``. Returns whether anything was recovered.
    """
    directory = Path(directory)
    if directory.exists() or not directory.parent.is_dir():
        return False
    name = directory.name
    for pattern in (f".tmp-{name}-*", f".old-{name}-*"):
        found = sorted(
            (p for p in directory.parent.glob(pattern) if is_complete(p)),
            key=lambda p: p.stat().st_mtime,
        )
        if found:
            os.replace(found[-1], directory)
            for stale in directory.parent.glob(f".old-{name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            return True
    return False


def verify_checkpoint(directory: Path) -> dict[str, str]:
    """Check the manifest and every checksum; raise :class:`CheckpointError` naming the problem."""
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist")
    if not manifest.is_file():
        raise CheckpointError(f"checkpoint {directory} is partial: no {MANIFEST}")
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {directory}: unreadable {MANIFEST}: {err}") from None
    for fname, digest in files.items():
        path = directory / fname
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory} is partial: {fname} is missing")
        if _sha256(path) != digest:
            raise CheckpointError(
                f"checkpoint {directory} is corrupted: {fname} fails its checksum"
            )
    return files


def load_checkpoint(directory: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Verify, then return ``(tensor groups, state)``."""
    files = verify_checkpoint(directory)
    groups = {}
    for fname in files:
        if not fname.endswith(".safetensors") or "/" in fname:
            continue
        try:
            groups[fname.removesuffix(".safetensors")] = load_file(str(Path(directory) / fname))
        except Exception as err:  # safetensors raises its own error type for a bad header
            raise CheckpointError(
                f"checkpoint {directory}: {fname} is not a readable safetensors file "
                f"({type(err).__name__}: {err})"
            ) from None
    try:
        state = json.loads((Path(directory) / "state.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {directory}: unreadable state.json: {err}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {directory}: state.json does not hold an object")
    return groups, state


def is_complete(directory: Path) -> bool:
    try:
        verify_checkpoint(directory)
    except CheckpointError:
        return False
    return True


def flatten_state(prefix: str, obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Split a nested state (e.g. an optimiser ``state_dict``) into tensors and a JSON skeleton."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {
            "__dict__": [[k, flatten_state(f"{prefix}.{k}", v, tensors)] for k, v in obj.items()]
        }
    if isinstance(obj, list | tuple):
        return {"__list__": [flatten_state(f"{prefix}.{i}", v, tensors) for i, v in enumerate(obj)]}
    return obj


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            return [unflatten_state(v, tensors) for v in skeleton["__list__"]]
    return skeleton
