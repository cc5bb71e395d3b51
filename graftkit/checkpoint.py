"""Atomic safetensors checkpoints with a checksummed manifest (no pickle anywhere).

A checkpoint is a folder: ``model.safetensors`` (bridge tensors), ``optimizer.safetensors``
(flattened optimiser/scheduler tensors), ``extra.safetensors`` (RNG states, EWC snapshot, ...),
``state.json`` (epoch, best metric, everything that is not a tensor) and ``manifest.json``
(sha256 of every file). It is written to a temporary sibling folder and renamed into place. A
folder cannot replace another in one rename, so overwriting takes two (old folder aside, new one
in); a writer killed between them leaves no checkpoint under its name but a complete new one
beside it, which :func:`recover_checkpoint` renames into place (roll forward), falling back to the
previous one. A writer killed earlier leaves an incomplete ``.tmp-*`` folder that is ignored. A
write the storage refuses (full, read-only, I/O error) raises
:class:`~graftkit.errors.StorageError` naming the checkpoint and leaves the previous one in place.

Damage is named by its file: a checksum that fails, a manifest or ``state.json`` that does not
parse, and a safetensors file whose structure is wrong (truncated, zeroed, not safetensors, a
tensor missing) each raise :class:`CheckpointError` with the path and what is wrong
(:func:`file_damage`); :func:`check_folder`, :func:`load_safetensors` and :func:`read_json` do
the same for folders without a manifest (``GraftedLM.save_pretrained``'s).

What is written is always full tensors: under FSDP the parameters and the optimiser state are
sharded (DTensors); the writer gathers them first and a reader lays a loaded full tensor out as
the parameter it goes into (:mod:`graftkit.distributed`), so a checkpoint is the same file
whatever the number of processes or the distributed type.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from graftkit.io import writing

MANIFEST = "manifest.json"

#: Bytes per element of each safetensors dtype (the format's specification,
#: github.com/huggingface/safetensors, "Format").
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}  # fmt: skip


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
    """Write ``{name}.safetensors`` for each tensor group plus ``state.json``, atomically.

    A storage fault raises :class:`~graftkit.errors.StorageError` naming ``directory``; the
    previous checkpoint under that name is then still there, complete.
    """
    directory = Path(directory)
    with writing(directory):
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{directory.name}-", dir=directory.parent))
        _write_checkpoint(directory, tmp, tensors, state, extra_files, writer)
    return directory


def _write_checkpoint(
    directory: Path,
    tmp: Path,
    tensors: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
    extra_files: dict[str, str] | None,
    writer: Callable[[Path], None] | None,
) -> None:
    old = None
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
        if old is not None and old.is_dir() and not directory.exists():
            os.replace(old, directory)  # the new one did not make it: the previous one stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    damage = file_damage(manifest)
    if damage is not None:
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST} is {damage}")
    try:
        files = json.loads(manifest.read_text())["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not a mapping")
    except (KeyError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint {directory}: {MANIFEST} is not a graftkit manifest ({err!r} missing "
            "or malformed)"
        ) from None
    for fname, digest in files.items():
        path = directory / fname
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory} is partial: {fname} is missing")
        if _sha256(path) != digest:
            damage = file_damage(path) or "its bytes changed, its structure is intact"
            raise CheckpointError(
                f"checkpoint {directory} is corrupted: {fname} fails its checksum ({damage})"
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


def _zeroed(head: bytes) -> bool:
    return len(head) > 0 and not head.strip(b"\0")


def safetensors_damage(path: Path, expected: Iterable[str] | None = None) -> str | None:
    """What is wrong with the safetensors file ``path``, read from its structure (an 8-byte
    little-endian header length, a JSON header giving each tensor's dtype, shape and byte
    range, then the data), else ``None``. ``expected``: tensor names it must hold."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if size == 0:
            return "empty (0 bytes)"
        if _zeroed(head + fh.read(4088)):
            return f"zeroed (its first {min(size, 4096)} bytes are all 0)"
        if size < 8:
            return f"truncated ({size} bytes: not even the 8-byte header length)"
        (length,) = struct.unpack("<Q", head)
        fh.seek(8)
        if length > size - 8:
            return (
                f"truncated or not safetensors (the header declares {length} bytes, the file "
                f"holds {size - 8} after the length)"
            )
        try:
            header = json.loads(fh.read(length))
        except (ValueError, UnicodeDecodeError):
            return "not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "not a safetensors file (its header is not a JSON object)"
    data = size - 8 - length
    needed = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(v) for v in entry["data_offsets"])
            shape, dtype = [int(v) for v in entry["shape"]], entry["dtype"]
        except (KeyError, TypeError, ValueError):
            return f"not a safetensors file (header entry {name!r} has no dtype/shape/offsets)"
        width = _DTYPE_BYTES.get(dtype)
        if width is not None and end - begin != width * math.prod(shape):
            return f"damaged header (tensor {name}: {end - begin} bytes for {dtype} {shape})"
        needed = max(needed, end)
    if needed > data:
        return f"truncated (its tensors need {needed} bytes of data, the file holds {data})"
    missing = sorted(set(expected or ()) - set(header) - {"__metadata__"})
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        return f"missing tensor {missing[0]}{more} (another model's file?)"
    return None


def json_damage(path: Path) -> str | None:
    """What is wrong with the JSON file ``path`` (empty, zeroed, not UTF-8, truncated, not
    JSON), else ``None``."""
    raw = Path(path).read_bytes()
    if not raw:
        return "empty (0 bytes)"
    if _zeroed(raw[:4096]):
        return f"zeroed (its first {min(len(raw), 4096)} bytes are all 0)"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start})"
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        if err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated"):
            return f"truncated (the JSON ends inside a value after {len(raw)} bytes)"
        return f"not valid JSON ({err.msg}, line {err.lineno} column {err.colno})"
    return None


def file_damage(path: Path) -> str | None:
    """What is wrong with a checkpoint's file, by its kind (``.safetensors``, ``.json``), else
    ``None`` (also for kinds it cannot check)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return safetensors_damage(path)
    if path.suffix == ".json":
        return json_damage(path)
    return None


def load_safetensors(path: Path, expected: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; :class:`CheckpointError` naming it and what is wrong
    when it is absent or damaged (:func:`safetensors_damage`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    damage = safetensors_damage(path, expected)
    if damage is not None:
        raise CheckpointError(f"{path} is {damage}")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error type
        raise CheckpointError(f"{path} is not readable ({type(err).__name__}: {err})") from None


def read_json(path: Path) -> Any:
    """The content of a JSON file; :class:`CheckpointError` naming it and what is wrong when it
    is absent or damaged (:func:`json_damage`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    damage = json_damage(path)
    if damage is not None:
        raise CheckpointError(f"{path} is {damage}")
    return json.loads(path.read_text(encoding="utf-8"))


def check_folder(directory: Path) -> None:
    """Check every ``.safetensors`` and ``.json`` file under ``directory`` by its structure
    (a saved folder without a manifest, e.g. ``GraftedLM.save_pretrained``'s); raise
    :class:`CheckpointError` naming the first damaged file and what is wrong."""
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file():
            damage = file_damage(path)
            if damage is not None:
                raise CheckpointError(f"{path} is {damage}")


def damage_of(directory: Path) -> str | None:
    """Why the checkpoint folder ``directory`` is not complete (the message
    :func:`verify_checkpoint` raises), else ``None``."""
    try:
        verify_checkpoint(directory)
    except CheckpointError as err:
        return str(err)
    return None


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
