"""The dataset interface the curriculum consumes, and the generic volume batch collator.

A dataset plugin subclasses :class:`GraftDataset` and registers it with ``register_datasets``.
Nothing here knows about CT: a "volume" is any input that an encoder turned into a sequence of
slice embeddings ``[N, d]`` with physical positions ``z_mm[N]``.
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch


class DataError(ValueError):
    """An input file the run cannot use as a whole (absent, empty, undecodable, a required column
    missing). The message names the file; the CLI prints it as one line and exits with code 2."""


def check_positions(z_mm: Any, name: str = "z_mm") -> str | None:
    """Why ``z_mm`` cannot be the slice positions of one volume, else ``None``.

    Positions must be finite and increase along the slices (ties allowed), as every encoder
    reader and the ``ZSpacing`` fallback give them: zone k is read from the k-th block of slices
    in file order and the position encoding is relative to the first slice (docs/design.md,
    "Zone-constrained cross-attention"), so slices out of order would put anatomy in the wrong
    zones. Such a volume is refused, not reordered: a dataset skips it by name, ``graftkit
    generate`` stops with this message.
    """
    z = np.asarray(z_mm, dtype=np.float64).reshape(-1)
    finite = np.isfinite(z)
    if not finite.all():
        return f"{name} holds NaN/Inf at slice {int(np.flatnonzero(~finite)[0])}"
    drops = np.flatnonzero(np.diff(z) < 0)
    if drops.size:
        i = int(drops[0]) + 1
        return (
            f"{name} is not increasing: slice {i} at {z[i]:g} mm comes after {z[i - 1]:g} mm; "
            "positions must increase along the slices (sort the slices by position)"
        )
    return None


@dataclass
class Volume:
    """One usable sample: its name, split, labels ``[C]`` and report text."""

    name: str
    split: str
    labels: np.ndarray
    findings: str
    impressions: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Skipped(NamedTuple):
    """One sample a run could not use: what :class:`SkipLog` records."""

    split: str
    name: str
    reason: str


@dataclass
class SkipLog:
    """Every sample a run could not use, with the reason. Nothing is dropped silently."""

    entries: list[tuple[str, str, str]] = field(default_factory=list)  # (split, name, reason)
    _seen: set[tuple[str, str]] = field(default_factory=set, repr=False, compare=False)

    def skip(self, split: str, name: str, reason: str) -> None:
        """Record one unusable sample; a sample already recorded keeps its first reason."""
        if (split, name) not in self._seen:
            self._seen.add((split, name))
            self.entries.append((split, name, reason))

    def summary(self) -> dict[str, Any]:
        kinds = Counter(reason.split(":")[0] for _, _, reason in self.entries)
        return {
            "skipped": len(self.entries),
            "by_reason": dict(kinds),
            "items": [{"split": s, "name": n, "reason": r} for s, n, r in self.entries],
        }


def join_condition_sentences(
    segments: Sequence[tuple[int, Sequence[str]]], rng: random.Random, normal_text: str
) -> str:
    """Positive-findings-only text (phases 2-3, Section III-C2/3) from ``(class, sentences)``
    segments: the segments in a random order (``rng``), a sentence that two classes share said
    once, in the first segment that holds it; ``normal_text`` when there is none."""
    order = list(segments)
    rng.shuffle(order)
    said: set[str] = set()
    parts = []
    for _, sentences in order:
        fresh = [s for s in sentences if s not in said]
        said.update(fresh)
        if fresh:
            parts.append(" ".join(fresh))
    return " ".join(parts) if parts else normal_text


class GraftDataset(ABC):
    """A dataset plugin: records, slice embeddings, and the texts each phase trains on.

    Args:
        config: the run's ``data`` section (:class:`graftkit.config.DataConfig`).
        workdir: a cache folder the dataset may write to (e.g. a synthesised cohort).
    """

    name: ClassVar[str] = ""
    class_names: ClassVar[list[str]] = []
    #: Text for a sample with no positive condition (docs/design.md, phase 3).
    normal_text: ClassVar[str] = "No significant abnormalities identified."
    #: The user turn of the chat prompt; the visual placeholders are put before it.
    prompt: ClassVar[str] = "Write the findings of this study."
    default_extractor: ClassVar[str] = ""
    splits: ClassVar[tuple[str, str]] = ("train", "valid")
    #: The profile ``graftkit run NAME`` uses when none is given (the embedded default).
    default_profile: ClassVar[str | None] = None
    #: Words of the class names that do not name a finding on their own (connectives, and for a
    #: modality its anatomy, e.g. CT-RATE's "lung" or "artery"): :meth:`finding_words` leaves them
    #: out. The default holds English connectives only; a dataset adds its domain's words.
    finding_stopwords: ClassVar[frozenset[str]] = frozenset({"with", "and", "the"})

    @classmethod
    def finding_words(cls) -> set[str]:
        """Words that name a finding, for the evaluation's NLL split on finding words vs other
        words (paper Table X): the lower-cased words of :attr:`class_names` longer than three
        letters, less :attr:`finding_stopwords`."""
        words = set()
        for name in cls.class_names:
            for word in re.findall(r"[a-z]+", name.lower()):
                if len(word) > 3 and word not in cls.finding_stopwords:
                    words.add(word)
        return words

    @classmethod
    def synthesize(cls, output: Path, **options: Any) -> dict[str, Any]:
        """Write a synthetic cohort in this dataset's own layout (``graftkit synth``)."""
        raise NotImplementedError(f"dataset {cls.name!r} has no synthetic cohort")

    def __init__(self, config: Any, workdir: Path):
        self.config = config
        self.workdir = Path(workdir)
        self.skips = SkipLog()
        #: Things the run should know that are not skips (e.g. a positional fallback), one line
        #: each; recorded in ``metrics.json`` as ``data.warnings``.
        self.warnings: list[str] = []

    def card_info(self) -> dict[str, Any]:
        """What ``graftkit export``'s model card says of the data: ``license`` (the Hub's licence
        id the trained weights inherit), ``datasets`` (Hub dataset ids), ``tags``; none by
        default."""
        return {}

    def extractor_options(self, name: str) -> dict[str, Any]:
        """Options the dataset gives label extractor ``name`` when a run builds it (a run's
        ``eval.extractor_options`` override them); none by default."""
        return {}

    def prepare(self, progress: Any = None) -> None:  # noqa: B027 - optional hook
        """Materialise the data if needed (e.g. synthesise a cohort); called once per run."""

    def run_files(self) -> dict[str, Path]:
        """Files :meth:`prepare` made by *training* that this run's data depends on (e.g. an
        encoder it trained on the images), as ``{file name: path}``; none by default.

        Called after :meth:`prepare` when a run starts: graftkit copies each into the run folder
        (``RUN/dataset/NAME``, with its sha256) and hands the copies back through
        :meth:`use_run_files` whenever the run is reopened (``graftkit eval``, ``generate``,
        ``run --resume``), so a finished run trains nothing again, whatever ``GRAFTKIT_CACHE``.
        Data that is read or synthesised deterministically need not be listed.
        """
        return {}

    def use_run_files(self, files: dict[str, Path]) -> None:
        """Use a run's own copies of :meth:`run_files` (same names) in :meth:`prepare`, which
        graftkit calls next, instead of training them again. Called only with files this
        dataset named for the same ``data`` settings; a dataset that names files must implement it.
        """
        raise NotImplementedError(
            f"dataset {self.name!r} names run_files() but does not implement use_run_files()"
        )

    @property
    @abstractmethod
    def embedding_dim(self) -> int:
        """The slice-embedding width ``d_v``."""

    @abstractmethod
    def records(self, split: str) -> list[Volume]:
        """Usable samples of ``split``; unusable ones go to ``self.skips`` with a reason."""

    @abstractmethod
    def load(self, volume: Volume) -> tuple[torch.Tensor, torch.Tensor]:
        """Slice embeddings ``[N, d]`` float32 and positions ``z_mm[N]`` float32 of one volume."""

    @abstractmethod
    def condition_texts(self, volume: Volume) -> list[tuple[int, str]]:
        """``(class index, text)`` for each positive condition (MMD / contrastive targets)."""

    @abstractmethod
    def class_text(self, class_index: int) -> str:
        """A canonical description of one class (text-embedding anchor for MMD and InfoNCE)."""

    def positive_findings_text(self, volume: Volume, rng: random.Random) -> str:
        """Phase 2-3 text: one segment per positive condition, in random order."""
        segments = [text for _, text in self.condition_texts(volume)]
        if not segments:
            return self.normal_text
        rng.shuffle(segments)
        return " ".join(segments)

    def finding_phrase(self, class_index: int) -> str:
        """The shortest text that names one class (its sentence in the ``canonical_findings``
        text): the class name unless the dataset's label extractor needs other words."""
        return self.class_names[class_index]

    def canonical_findings_segments(self, volume: Volume) -> list[tuple[int, str]]:
        """``(class, sentence)`` of the canonical text: :meth:`finding_phrase` of each positive
        class, in class order, as one sentence each."""
        positives = np.flatnonzero(np.asarray(volume.labels) > 0)
        return [(int(c), f"{self.finding_phrase(int(c))}.") for c in positives]

    def canonical_findings_text(self, volume: Volume) -> str:
        """Low-entropy phase-3 text: the :meth:`canonical_findings_segments` joined.

        The wording is fixed, so the LM loss falls on *which* findings are named, not on how a
        radiologist phrased them (the text kind ``canonical_findings``). No positive class:
        :attr:`normal_text`.
        """
        segments = self.canonical_findings_segments(volume)
        return " ".join(text for _, text in segments) if segments else self.normal_text

    def narrative_text(self, volume: Volume) -> str:
        """Phase 4 text: the raw report."""
        if getattr(self.config, "include_impressions", False) and volume.impressions:
            return f"{volume.findings} {volume.impressions}"
        return volume.findings

    def summarised_narrative_text(self, volume: Volume) -> str:
        """A report that opens with its summary: the positive findings named as phase 3 learnt to
        name them (:meth:`canonical_findings_text`), then the radiologist's narrative
        (:meth:`narrative_text`). In a narrative alone the decisions that depend on the image
        (to state a finding here) are a few tokens of hundreds; the summary keeps them in front
        (docs/benchmarks.md, "Phase 4 at the embedded default's scale")."""
        return f"{self.canonical_findings_text(volume)} {self.narrative_text(volume)}"

    def corpus(self, kinds: Sequence[str] = ("narrative",)) -> list[str]:
        """Texts the language prior is pretrained on: for each text kind in ``kinds``
        (``narrative``: the raw reports; ``canonical_findings``), that text of every training
        volume. No images and no other split are involved."""
        texts = {
            "narrative": self.narrative_text,
            "canonical_findings": self.canonical_findings_text,
        }
        train = self.records(self.splits[0])
        return [texts[kind](v) for kind in kinds for v in train]

    def oracle(self) -> dict[str, Any] | None:
        """The best achievable scores, for cohorts that know their own signal."""
        return None


class VolumeDataset(torch.utils.data.Dataset):
    """Torch view over a list of :class:`Volume`: loads embeddings lazily, one volume per item.

    With ``skip_unloadable`` (training), a volume whose file fails to load now although it passed
    the data scan (changed since) is recorded in ``dataset.skips`` by name and comes back as a
    :class:`Skipped`, which :func:`collate_volumes` leaves out: one file does not end the run. In
    a DataLoader worker process ``dataset.skips`` is the worker's copy, so the batch carries the
    :class:`Skipped` to the training process (:func:`graftkit.curriculum.batches.loaded`).
    Without it (evaluation, where every volume must be scored) the :class:`DataError` naming the
    file propagates.
    """

    def __init__(
        self,
        dataset: GraftDataset,
        volumes: list[Volume],
        max_slices: int | None = None,
        skip_unloadable: bool = False,
    ):
        self.dataset, self.volumes, self.max_slices = dataset, volumes, max_slices
        self.skip_unloadable = skip_unloadable

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        volume = self.volumes[index]
        try:
            slices, z_mm = self.dataset.load(volume)
        except DataError as err:
            if not self.skip_unloadable:
                raise
            skipped = Skipped(volume.split, volume.name, f"failed at load: {err}")
            self.dataset.skips.skip(*skipped)
            return skipped
        bad = check_positions(z_mm)
        if bad is not None:
            err = DataError(f"bad positions: {volume.name}: {bad}")
            if not self.skip_unloadable:
                raise err
            skipped = Skipped(volume.split, volume.name, f"failed at load: {err}")
            self.dataset.skips.skip(*skipped)
            return skipped
        if self.max_slices and slices.shape[0] > self.max_slices:
            keep = torch.linspace(0, slices.shape[0] - 1, self.max_slices).round().long()
            slices, z_mm = slices[keep], z_mm[keep]
        return {
            "index": index,
            "slices": slices,
            "z_mm": z_mm,
            "labels": torch.as_tensor(volume.labels, dtype=torch.float32),
        }


def collate_volumes(items: list[dict[str, Any] | Skipped]) -> dict[str, torch.Tensor]:
    """Pad slice sequences to the longest in the batch; ``mask`` marks real slices.

    :class:`Skipped` items (volumes that failed at load, see :class:`VolumeDataset`) are left out.
    """
    items = [item for item in items if not isinstance(item, Skipped)]
    if not items:
        raise DataError("every volume of this batch failed to load (see the skipped volumes)")
    n_max = max(item["slices"].shape[0] for item in items)
    dim = items[0]["slices"].shape[1]
    batch = len(items)
    slices = torch.zeros(batch, n_max, dim, dtype=items[0]["slices"].dtype)
    z_mm = torch.zeros(batch, n_max)
    mask = torch.zeros(batch, n_max, dtype=torch.bool)
    for b, item in enumerate(items):
        n = item["slices"].shape[0]
        slices[b, :n] = item["slices"]
        z_mm[b, :n] = item["z_mm"]
        mask[b, :n] = True
    return {
        "index": torch.tensor([item["index"] for item in items]),
        "slices": slices,
        "z_mm": z_mm,
        "mask": mask,
        "labels": torch.stack([item["labels"] for item in items]),
    }


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The per-sample text-order RNG; a pure function of (seed, epoch, index) so resume repeats it."""
    return random.Random((seed * 1_000_003 + epoch) * 1_000_003 + index)


#: The response text of each text kind a phase may declare (``PhaseConfig.text``).
RESPONSE_TEXTS = {
    "positive_findings": lambda dataset, volume, rng: dataset.positive_findings_text(volume, rng),
    "canonical_findings": lambda dataset, volume, rng: dataset.canonical_findings_text(volume),
    "narrative": lambda dataset, volume, rng: dataset.narrative_text(volume),
    "summarised_narrative": lambda dataset, volume, rng: dataset.summarised_narrative_text(volume),
}

#: The text kinds whose response opens with a statement of the findings followed by other text:
#: that statement, for ``finding_weight`` (:func:`graftkit.curriculum.batches.stated_tokens`).
#: A findings text kind states findings in its whole response.
FINDINGS_STATEMENTS = {
    "summarised_narrative": lambda dataset, volume: dataset.canonical_findings_text(volume),
}


def response_text(dataset: GraftDataset, volume: Volume, kind: str, rng: random.Random) -> str:
    """The target text of ``volume`` for a phase of text kind ``kind`` (:data:`RESPONSE_TEXTS`);
    ``conditions`` phases train no LM and fall back to the positive-findings text."""
    return RESPONSE_TEXTS.get(kind, RESPONSE_TEXTS["positive_findings"])(dataset, volume, rng)
