"""Per-phase batches: slice tensors, label vectors, aligned text targets and chat tokens.

The declared ``text`` kind of a phase picks what each sample is paired with:
``conditions`` (whitened condition-text embeddings, phase 1), ``positive_findings`` (phases 2-3:
one segment per positive condition in a per-sample random order) or ``narrative`` (phase 4).

Chat encodings hold at most the run's token budget (the language prior's ``prior.max_length``,
else :func:`graftkit.lm.chat.text_budget` of the LLM's tokenizer); a longer response is cut to
it, and :func:`cut_texts` counts the reports that are, once per run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from graftkit.data import (
    FINDINGS_STATEMENTS,
    GraftDataset,
    Skipped,
    Volume,
    VolumeDataset,
    collate_volumes,
    response_text,
    sample_rng,
)
from graftkit.lm import ChatPrompt, encode_chat, pad_batch
from graftkit.lm.chat import text_budget


class TextTargets:
    """Whitened text targets per volume: its positive-condition embeddings and one summary target."""

    def __init__(self, dataset: GraftDataset, volumes: list[Volume], textspace):
        self.conditions: list[torch.Tensor] = []
        self.summary: list[torch.Tensor] = []
        normal = textspace[dataset.normal_text]
        for volume in volumes:
            texts = [text for _, text in dataset.condition_texts(volume)]
            if texts:
                emb = torch.stack([textspace[t] for t in texts])
                self.conditions.append(emb)
                self.summary.append(emb.mean(0))
            else:
                self.conditions.append(torch.zeros(0, textspace.dim))
                self.summary.append(normal)

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        m_max = max(1, max(self.conditions[i].shape[0] for i in indices))
        dim = self.summary[0].shape[0]
        cond = torch.zeros(len(indices), m_max, dim)
        mask = torch.zeros(len(indices), m_max, dtype=torch.bool)
        for b, i in enumerate(indices):
            m = self.conditions[i].shape[0]
            cond[b, :m] = self.conditions[i]
            mask[b, :m] = True
        return {
            "cond_emb": cond,
            "cond_mask": mask,
            "text_emb": torch.stack([self.summary[i] for i in indices]),
        }


class PhaseCollator:
    """Collates :class:`VolumeDataset` items for one phase (picklable for DataLoader workers).

    ``max_length``: the token budget of a chat encoding; ``None`` is the tokenizer's own
    (:func:`~graftkit.lm.chat.text_budget`), never no budget.
    """

    def __init__(
        self,
        dataset: GraftDataset,
        volumes: list[Volume],
        targets: TextTargets | None,
        tokenizer: Any | None,
        text_kind: str,
        num_visual_tokens: int,
        seed: int,
        max_length: int | None = None,
        finding_weight: float = 1.0,
        prompt: ChatPrompt | None = None,
    ):
        self.dataset, self.volumes, self.targets = dataset, volumes, targets
        self.tokenizer, self.text_kind = tokenizer, text_kind
        if max_length is None and tokenizer is not None:
            max_length = text_budget(tokenizer)
        self.k, self.seed, self.max_length = num_visual_tokens, seed, max_length
        self.finding_weight = finding_weight
        self.prompt = prompt if prompt is not None else ChatPrompt(dataset.prompt)
        self.epoch = 0

    def _encode(self, text: str) -> dict[str, Any]:
        return encode_chat(self.tokenizer, self.prompt, text, self.k, max_length=self.max_length)

    def __call__(self, items: list[dict[str, Any] | Skipped]) -> dict[str, Any]:
        skipped = [item for item in items if isinstance(item, Skipped)]
        if len(skipped) == len(items):
            return {"skipped": skipped}  # every volume of this batch failed to load
        batch = collate_volumes(items)
        if skipped:
            batch["skipped"] = skipped
        indices = batch["index"].tolist()
        if self.targets is not None:
            batch.update(self.targets.batch(indices))
        if self.tokenizer is not None:
            encodings, stated = [], []
            for i in indices:
                volume = self.volumes[i]
                text = response_text(
                    self.dataset, volume, self.text_kind, sample_rng(self.seed, self.epoch, i)
                )
                encodings.append(self._encode(text))
                if self.finding_weight != 1.0:
                    stated.append(
                        stated_tokens(
                            self.dataset, volume, self.text_kind, text, encodings[-1], self._encode
                        )
                    )
            padded = pad_batch(encodings, self.tokenizer.pad_token_id, side="right")
            batch["input_ids"] = padded["input_ids"]
            batch["attention_mask"] = padded["attention_mask"]
            batch["labels_lm"] = padded["labels"]
            if self.finding_weight != 1.0:
                batch["lm_weights"] = finding_weights(
                    padded["labels"], torch.tensor(stated), self.finding_weight
                )
        return batch


def cut_texts(
    dataset: GraftDataset,
    splits: Mapping[str, Sequence[Volume]],
    kinds: Iterable[str],
    tokenizer: Any,
    prompt: ChatPrompt,
    num_visual_tokens: int,
    max_length: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Which volumes' responses of text ``kinds`` are longer than ``max_length`` tokens as chat
    encodings (the texts :class:`PhaseCollator` cuts), per kind and split, and the longest.

    The order of a ``positive_findings`` text is epoch 0's (its length hardly depends on the
    order). Only texts that could be too long are tokenised: a token holds at least one byte of
    its text in a byte-level BPE, so a response of fewer UTF-8 bytes than the room the prompt
    and the template's turn markers leave cannot be cut.
    """
    prompt_tokens = len(encode_chat(tokenizer, prompt, None, num_visual_tokens)["input_ids"])
    markers = len(encode_chat(tokenizer, prompt, "a", num_visual_tokens)["input_ids"])
    room = max_length - markers - 8  # 8: a margin for tokenizers that add a word-start marker
    by_text: dict[str, dict[str, int]] = {}
    names: set[tuple[str, str]] = set()
    longest: dict[str, Any] | None = None
    for kind in dict.fromkeys(kinds):
        for split, volumes in splits.items():
            for i, volume in enumerate(volumes):
                text = response_text(dataset, volume, kind, sample_rng(seed, 0, i))
                if len(text.encode("utf-8")) <= room:
                    continue
                enc = encode_chat(tokenizer, prompt, text, num_visual_tokens)
                tokens = len(enc["input_ids"])
                if tokens <= max_length:
                    continue
                counts = by_text.setdefault(kind, {})
                counts[split] = counts.get(split, 0) + 1
                names.add((split, volume.name))
                if longest is None or tokens > longest["tokens"]:
                    longest = {"split": split, "name": volume.name, "text": kind, "tokens": tokens}
    summary: dict[str, Any] = {
        "max_length": max_length,
        "prompt_tokens": prompt_tokens,
        "reports": len(names),
    }
    if names:
        summary.update(by_text=by_text, longest=longest)
    return summary


def describe_cut(summary: dict[str, Any], purpose: str) -> str | None:
    """``data: 64 report(s) cut to 256 tokens for training (narrative: 48 train, 16 valid; the
    longest 2466 tokens); see metrics.json data.cut`` from :func:`cut_texts`, or ``None``."""
    if not summary.get("reports"):
        return None
    kinds = "; ".join(
        f"{kind}: " + ", ".join(f"{n} {split}" for split, n in counts.items())
        for kind, counts in summary["by_text"].items()
    )
    return (
        f"data: {summary['reports']} report(s) cut to {summary['max_length']} tokens {purpose} "
        f"({kinds}; the longest {summary['longest']['tokens']} tokens, "
        f"{summary['longest']['name']}); see metrics.json data.cut"
    )


def loaded(dataset: GraftDataset, batch: dict[str, Any]) -> dict[str, Any] | None:
    """The batch without its load-time skips, which go to ``dataset.skips`` (a DataLoader worker
    process records them in its own copy only); ``None`` when none of its volumes loaded."""
    for entry in batch.pop("skipped", ()):
        dataset.skips.skip(*entry)
    return batch if "slices" in batch else None


def finding_weights(labels: torch.Tensor, stated: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-token LM loss weights ``[B, T]``: ``weight`` on the response tokens that state findings.

    ``stated[b]`` is how many of row b's first response tokens state findings
    (:func:`stated_tokens`): all but the last (the end-of-turn token, the decision to stop) of a
    findings text, the opening summary of a ``summarised_narrative``, none of the normal text.
    Those tokens get ``weight``, the rest 1. Missing a finding then costs more than naming one
    that is absent, as ``pos_weight`` does for the BCE heads: the model's stop decisions shift
    towards recall (``PhaseConfig.finding_weight``).
    """
    target = labels != -100
    position = target.long().cumsum(dim=1)  # 1 at the first response token
    marked = target & (position <= stated.unsqueeze(1))
    return torch.where(marked, torch.tensor(float(weight)), torch.tensor(1.0))


def stated_tokens(
    dataset: GraftDataset, volume: Volume, kind: str, text: str, encoding: dict, encode
) -> int:
    """How many leading response tokens of ``encoding`` (the response ``text`` of text kind
    ``kind``) state findings: none for the normal text; the tokens of its opening findings text
    (:data:`graftkit.data.FINDINGS_STATEMENTS`, counted by ``encode`` of that text alone) for a
    kind that opens with one; else every response token but the end-of-turn."""
    statement = FINDINGS_STATEMENTS.get(kind)
    response = _response_length(encoding) - 1  # without the end-of-turn token
    if statement is None:
        return response if text != dataset.normal_text else 0
    opening = statement(dataset, volume)
    if opening == dataset.normal_text:
        return 0
    return min(response, _response_length(encode(opening)) - 1)


def _response_length(encoding: dict) -> int:
    """The number of trained tokens of an :func:`~graftkit.lm.encode_chat` encoding."""
    return sum(1 for label in encoding["labels"] if label != -100)


def make_loader(
    dataset: GraftDataset,
    volumes: list[Volume],
    collator: PhaseCollator,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    max_slices: int | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    """A loader over this process's shard; the order is a pure function of (seed, epoch)."""
    n = len(volumes)
    if shuffle:
        order = torch.randperm(
            n, generator=torch.Generator().manual_seed(seed * 9973 + epoch)
        ).tolist()
    else:
        order = list(range(n))
    per_rank = n // world if world > 1 else n
    shard = order[rank::world][:per_rank]
    if drop_last and len(shard) >= batch_size:
        shard = shard[: len(shard) - len(shard) % batch_size]
    collator.epoch = epoch
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(
            VolumeDataset(dataset, volumes, max_slices, skip_unloadable=True), shard
        ),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collator,
        num_workers=num_workers,
    )
