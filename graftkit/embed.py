"""The embedding runner behind ``graftkit embed``: inputs → one slice-embedding file per input.

docs/design.md, data flow: an encoder plugin turns each volume into ``S ∈ R^{N×d_v}`` and physical
positions ``z ∈ R^N``. :func:`run_embed` applies a registered :class:`~graftkit.encoders.Encoder`
to many inputs and writes ``{stem}.npz`` holding ``embeddings`` (float16, ``[N, d]``) and
``z_mm`` (float32, ``[N]``): the layout the CT-RATE dataset reads ("Precomputed slice embeddings":
``{VolumeName without .nii.gz}`` + ``.npz`` with key ``embeddings``).

- Which inputs a folder holds, and the output name of each, are the encoder's
  (:meth:`~graftkit.encoders.Encoder.discover_inputs`, :meth:`~graftkit.encoders.Encoder.input_stem`):
  this module knows no file format.
- Each file is written to a hidden temporary name and renamed, so an interrupted run never leaves
  a file that looks complete; with ``resume`` a complete output is skipped and a partial or
  corrupt one is redone.
- Under ``torchrun``/``accelerate launch`` (``RANK``/``WORLD_SIZE``), rank ``r`` of ``w`` takes
  ``inputs[r::w]``; summaries are gathered over a gloo group so every rank reports the whole run.
- A volume that fails (corrupt, empty, not CT, ...) is recorded with its file name and reason and
  the run goes on; :attr:`EmbedSummary.exit_code` is non-zero if any failed. A write the storage
  refuses (:class:`~graftkit.errors.StorageError`: full, read-only, I/O error) stops the run, since
  every next volume would fail the same way.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

import numpy as np

from graftkit.encoders import EncodedVolume, Encoder
from graftkit.errors import StorageError
from graftkit.io import atomic_file

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Outputs


def output_file(output: Path, path: Path, encoder: Encoder | type[Encoder]) -> Path:
    """Where the embeddings of input ``path`` go: ``output/{encoder.input_stem(path)}.npz``."""
    return Path(output) / f"{encoder.input_stem(path)}.npz"


def write_embeddings(target: Path, encoded: EncodedVolume) -> None:
    """Write ``embeddings`` (float16) and ``z_mm`` (float32) to ``target`` atomically."""
    with atomic_file(target, fsync=True) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            embeddings=np.asarray(encoded.embeddings, dtype=np.float16),
            z_mm=np.asarray(encoded.z_mm, dtype=np.float32),
        )


def read_embeddings(path: Path) -> EncodedVolume:
    """Read an output of :func:`run_embed`; raises ``ValueError`` naming the file if it is broken."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            embeddings = np.asarray(data["embeddings"])
            z_mm = np.asarray(data["z_mm"])
    except Exception as err:  # zipfile/np.load raise several types for a truncated archive
        raise ValueError(
            f"{path.name}: unreadable embedding file ({type(err).__name__}: {err})"
        ) from err
    return EncodedVolume(embeddings=embeddings, z_mm=z_mm)


class FallbackWarning(UserWarning):
    """An input was used with a fallback (positions from the slice index, a narrowing dtype
    cast); the message names the input and what was done."""


def read_case(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One case's slice embeddings for ``graftkit generate``: a ``.npy`` of shape ``(N, d)`` (or
    ``(N, T, d)``, token 0 = CLS), or an ``.npz`` with ``embeddings`` and optionally ``z_mm``.

    Returns float32 ``(N, d)`` and positions ``z_mm[N]``; ``ValueError`` naming the file. As in a
    dataset (docs/ct-rate.md): no ``z_mm`` gives the slice index (1 mm per slice) and ``z_mm``
    that does not increase along the slices is refused (:func:`graftkit.data.check_positions`);
    every fallback, and a cast that narrows the dtype, is a :class:`FallbackWarning`.
    """
    import warnings
    import zipfile

    from graftkit.data import check_positions

    path = Path(path)
    keys: list[str] = []
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                keys = sorted(data.files)
                emb = data["embeddings"] if "embeddings" in keys else None
                z = data["z_mm"] if "z_mm" in keys else None
        else:
            emb, z = np.load(path, allow_pickle=False), None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: cannot read embeddings ({err})") from None
    if emb is None:
        raise ValueError(f"{path}: no key 'embeddings' in the .npz (keys: {keys})")
    if emb.ndim == 3:
        emb = emb[:, 0]
    if emb.ndim != 2:
        raise ValueError(f"{path}: embeddings must be (N, d) or (N, T, d), got shape {emb.shape}")
    if emb.shape[0] == 0 or emb.shape[1] == 0:
        raise ValueError(f"{path}: embeddings of shape {emb.shape} hold no slice")
    if not np.issubdtype(emb.dtype, np.floating):
        raise ValueError(f"{path}: embeddings have dtype {emb.dtype}, expected floating point")
    if emb.dtype.itemsize > 4:
        warnings.warn(
            f"{path}: embeddings cast from {emb.dtype} to float32 (the model's precision)",
            FallbackWarning,
            stacklevel=2,
        )
    if z is None:
        where = "no z_mm in the .npz" if path.suffix == ".npz" else "a .npy holds no z_mm"
        warnings.warn(
            f"{path}: {where}: positions fall back to the slice index (1 mm per slice)",
            FallbackWarning,
            stacklevel=2,
        )
        z = np.arange(emb.shape[0], dtype=np.float32)
    z = np.asarray(z)
    if z.shape != (emb.shape[0],) or not np.issubdtype(z.dtype, np.number):
        raise ValueError(
            f"{path}: z_mm must be {emb.shape[0]} positions, got shape {z.shape} ({z.dtype})"
        )
    bad = check_positions(z)
    if bad is not None:
        raise ValueError(f"{path}: {bad}")
    return emb.astype("float32"), z.astype("float32")


def encode_case(encoder: str, path: Path, weights: Path | None = None):
    """One input embedded by the registered encoder ``encoder`` (``graftkit generate --volume``):
    float32 ``(N, d)`` and ``z_mm``; ``ValueError`` naming the encoder or the input."""
    from graftkit import plugins
    from graftkit.errors import one_line

    if not Path(path).exists():
        raise ValueError(f"--volume {path}: no such file or folder")
    encoder_cls = plugins.get("encoder", encoder)
    try:
        built = encoder_cls(weights=weights)
    except (ValueError, OSError, TypeError) as err:
        raise ValueError(f"encoder {encoder}: {one_line(err)}") from None
    try:
        encoded = built.encode(path)
    except (ValueError, OSError) as err:
        raise ValueError(f"--volume {path}: {err}") from None
    emb = np.asarray(encoded.embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ValueError(f"--volume {path}: the encoder returned no slice embeddings")
    return emb, encoded.z_mm


def load_case(
    embeddings: Path | None = None,
    volume: Path | None = None,
    encoder: str | None = None,
    weights: Path | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One case for ``graftkit generate``: its ``.npz`` of slice embeddings (:func:`read_case`;
    each fallback it takes is passed to ``warn``) or a ``volume`` embedded by ``encoder``
    (:func:`encode_case`); positions that do not increase and non-finite embeddings are refused.
    ``ValueError`` naming the file."""
    import warnings

    from graftkit.data import check_positions

    source = embeddings or volume
    if volume is not None:
        if not encoder:
            raise ValueError("--volume needs --encoder NAME")
        emb, z = encode_case(encoder, volume, weights)
    else:
        with warnings.catch_warnings(record=True) as fallbacks:
            warnings.simplefilter("always", FallbackWarning)
            emb, z = read_case(embeddings)
        for fallback in fallbacks:
            if issubclass(fallback.category, FallbackWarning) and warn is not None:
                warn(str(fallback.message))
            else:
                warnings.warn_explicit(
                    fallback.message, fallback.category, fallback.filename, fallback.lineno
                )
    bad = check_positions(z) if z is not None else None
    if bad is not None:
        raise ValueError(f"{source}: {bad}")
    if not np.isfinite(emb).all():
        raise ValueError(f"{source}: embeddings contain NaN or Inf")
    return emb, z


def check_encoded(encoded: EncodedVolume, dim: int, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``embeddings`` is finite ``[N, dim]`` and
    ``z_mm`` is ``[N]`` (``dim`` 0 accepts any width)."""
    emb, z = np.asarray(encoded.embeddings), np.asarray(encoded.z_mm)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ValueError(f"{name}: embeddings must be [N, d] with N > 0, got shape {emb.shape}")
    if dim and emb.shape[1] != dim:
        raise ValueError(f"{name}: embeddings have dim {emb.shape[1]}, encoder declares {dim}")
    if z.shape != (emb.shape[0],):
        raise ValueError(f"{name}: z_mm has shape {z.shape}, expected ({emb.shape[0]},)")
    if not (np.isfinite(emb).all() and np.isfinite(z).all()):
        raise ValueError(f"{name}: embeddings or z_mm hold NaN/inf")


def is_complete(path: Path, dim: int) -> bool:
    """True when ``path`` is a readable, valid output for an encoder of width ``dim``."""
    if not Path(path).is_file():
        return False
    try:
        check_encoded(read_embeddings(path), dim, Path(path).name)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Runner


def dist_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` from torch.distributed if initialised, else from the launcher's env."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass
class VolumeResult:
    """What happened to one input: ``status`` is ``ok``, ``skipped`` (complete output) or ``failed``."""

    name: str
    status: Literal["ok", "skipped", "failed"]
    reason: str = ""
    slices: int = 0
    seconds: float = 0.0
    rank: int = 0


@dataclass
class EmbedSummary:
    """Outcome of :func:`run_embed` over all ranks: file names embedded, skipped and failed."""

    ok: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    slices: int = 0
    seconds: float = 0.0
    world_size: int = 1
    results: list[VolumeResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def add(self, result: VolumeResult) -> None:
        self.results.append(result)
        if result.status == "ok":
            self.ok.append(result.name)
            self.slices += result.slices
        elif result.status == "skipped":
            self.skipped.append(result.name)
        else:
            self.failed.append((result.name, result.reason))

    def format(self) -> str:
        lines = [
            f"embedded {len(self.ok)}, skipped {len(self.skipped)} (complete), failed {len(self.failed)}"
            f"; {self.slices} slices in {self.seconds:.1f} s on {self.world_size} process(es)"
        ]
        lines += [f"  FAILED {name}: {reason}" for name, reason in self.failed]
        return "\n".join(lines)


def run_embed(
    encoder: Encoder,
    inputs: list[Path],
    output: Path,
    batch_size: int = 16,
    limit: int | None = None,
    resume: bool = True,
    progress: Callable[[VolumeResult], None] | None = None,
) -> EmbedSummary:
    """Embed ``inputs`` with ``encoder`` into ``output/{stem}.npz``, one file per volume.

    ``batch_size`` is the number of slices per forward pass, handed to encoders that batch (those
    with a ``batch_size`` attribute). ``limit`` keeps the first ``limit`` inputs (before sharding).
    ``progress`` is called with each :class:`VolumeResult`. Under a multi-process launch each rank
    embeds ``inputs[rank::world_size]`` and the returned summary covers every rank.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    inputs = [Path(p) for p in inputs][: limit if limit is not None else None]
    check_unique_outputs(inputs, output, encoder)
    if hasattr(encoder, "batch_size"):
        encoder.batch_size = batch_size
    rank, world = dist_rank_world()
    dim = int(getattr(encoder, "dim", 0) or 0)
    start = time.perf_counter()
    local = EmbedSummary(world_size=world)
    for path in inputs[rank::world]:
        result = _embed_one(encoder, path, output, dim, resume)
        result.rank = rank
        local.add(result)
        if result.status == "failed":
            log.warning("rank %d: %s failed: %s", rank, result.name, result.reason)
        if progress is not None:
            progress(result)
    local.seconds = time.perf_counter() - start
    return _gather(local) if world > 1 else local


def _embed_one(encoder: Encoder, path: Path, output: Path, dim: int, resume: bool) -> VolumeResult:
    target = output_file(output, path, encoder)
    for stale in output.glob(f".{target.name}.tmp*"):  # left by a killed run (this rank's input)
        stale.unlink(missing_ok=True)
    if resume and is_complete(target, dim):
        return VolumeResult(path.name, "skipped")
    start = time.perf_counter()
    try:
        encoded = encoder.encode(path)
        check_encoded(encoded, dim, path.name)
        if np.abs(encoded.embeddings).max() > np.finfo(np.float16).max:
            raise ValueError(f"{path.name}: embeddings overflow float16 (|x| > 65504)")
        write_embeddings(target, encoded)
    except StorageError:
        raise  # the disk, not this volume: every next one would fail the same way
    except Exception as err:
        reason = str(err)
        prefix = f"{path.name}: "
        reason = (
            reason[len(prefix) :]
            if reason.startswith(prefix)
            else f"{type(err).__name__}: {reason}"
        )
        return VolumeResult(path.name, "failed", reason=reason)
    return VolumeResult(
        path.name, "ok", slices=len(encoded.z_mm), seconds=time.perf_counter() - start
    )


def check_unique_outputs(
    inputs: list[Path], output: Path, encoder: Encoder | type[Encoder]
) -> None:
    """Raise ``ValueError`` naming both inputs when two would write the same output file."""
    seen: dict[Path, Path] = {}
    for path in inputs:
        target = output_file(output, path, encoder)
        if target in seen:
            raise ValueError(
                f"inputs {seen[target]} and {path} would both write {target.name}; rename one"
            )
        if target.resolve() == path.resolve():
            raise ValueError(f"input {path} is its own output; choose another --output folder")
        seen[target] = path


def _gather(local: EmbedSummary) -> EmbedSummary:
    """All ranks' summaries, gathered over a gloo group (created if the launcher made none)."""
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(hours=24))
        created = True
    group = dist.new_group(backend="gloo", timeout=timedelta(hours=24))
    gathered: list[EmbedSummary | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local, group=group)
    dist.barrier(group=group)  # gloo frees the gather's work before exit can race it
    dist.destroy_process_group(group)
    if created:
        dist.destroy_process_group()
    merged = EmbedSummary(world_size=local.world_size)
    for part in gathered:
        assert part is not None
        for result in part.results:
            merged.add(result)
        merged.seconds = max(merged.seconds, part.seconds)
    return merged
