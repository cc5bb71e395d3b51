"""Report generation for evaluation, with the paper's visual-token ablations (docs/design.md "Evaluation").

Visual tokens are computed once per volume (compressor -> predictor -> calibrator), then used
as they are (``real``), zeroed (``zero``), taken from another patient (``shuffle``: a cyclic shift
over the evaluated volumes) or replaced by Gaussian noise of the same per-token norm (``random``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from graftkit.data import GraftDataset, Volume, VolumeDataset, collate_volumes
from graftkit.eval.shard import SINGLE, Sharding, batch_spans, concat, map_batches, unit_seed
from graftkit.lm import ChatPrompt, encode_chat, pad_batch

ABLATIONS = ("real", "zero", "shuffle", "random")


def encode_with(
    glm, state: Mapping[str, torch.Tensor] | None, slices, z_mm, mask
) -> tuple[torch.Tensor, torch.Tensor]:
    """``glm.encode`` (compressor -> predictor -> calibrator) with the bridge tensors of
    ``state`` (a phase checkpoint's ``model`` tensors) in place of the model's, which are left as
    they are: ``torch.func.functional_call`` on each of the three modules. ``state=None`` is
    ``glm.encode``. Nothing is loaded into the model, so this also reads another checkpoint's
    tokens from a sharded (FSDP) model, whose parameters a ``state_dict`` call would swap back to
    their shards."""
    if state is None:
        return glm.encode(slices, z_mm, mask)
    from accelerate.utils import send_to_device
    from torch.func import functional_call

    modules = {
        "compressor": glm.compressor,
        "predictor": glm.predictor,
        "calibrator": glm.calibrator,
    }
    device = next(glm.predictor.parameters()).device
    parts = {
        group: {
            name.split(".", 1)[1]: tensor.to(device)
            for name, tensor in state.items()
            if name.split(".", 1)[0] == group
        }
        for group in modules
    }
    slices, z_mm, mask = send_to_device((slices, z_mm, mask), device)
    zones = functional_call(
        glm.compressor, parts["compressor"], (slices,), {"z_mm": z_mm, "mask": mask}, strict=True
    )
    hidden = functional_call(glm.predictor, parts["predictor"], (zones,), strict=True)
    return zones, functional_call(glm.calibrator, parts["calibrator"], (hidden,), strict=True)


@torch.inference_mode()
def visual_tokens(
    glm,
    dataset: GraftDataset,
    volumes: Sequence[Volume],
    batch_size: int = 16,
    max_slices: int | None = None,
    sharding: Sharding | None = None,
    state: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Calibrated visual tokens ``[n, K, d_l]`` for each volume (eval mode); with ``sharding``
    each process encodes its batches and every process gets all of them
    (:mod:`graftkit.eval.shard`); with ``state``, the tokens of that checkpoint's bridge
    (:func:`encode_with`)."""
    glm.eval()
    data = VolumeDataset(dataset, list(volumes), max_slices)

    def encode(_: int, start: int, stop: int) -> torch.Tensor:
        batch = collate_volumes([data[i] for i in range(start, stop)])
        return (
            encode_with(glm, state, batch["slices"], batch["z_mm"], batch["mask"])[1].float().cpu()
        )

    return concat(map_batches(sharding, len(data), batch_size, encode))


@torch.inference_mode()
def zone_features(
    glm,
    dataset: GraftDataset,
    volumes: Sequence[Volume],
    raw: bool,
    batch_size: int = 64,
    max_slices: int | None = None,
    sharding: Sharding | None = None,
) -> torch.Tensor:
    """``[n, K, d_v]`` per volume: the compressor's K zone tokens, or (``raw``) the mean raw slice
    embedding of each of the same K zones (docs/design.md zone formula): what a reader of the encoder's
    output could have had before any training. ``sharding`` as in :func:`visual_tokens`."""
    from graftkit.bridge.zones import zone_mask

    glm.eval()
    data = VolumeDataset(dataset, list(volumes), max_slices)

    def features(_: int, start: int, stop: int) -> torch.Tensor:
        batch = collate_volumes([data[i] for i in range(start, stop)])
        if raw:
            zones = zone_mask(batch["mask"], glm.num_visual_tokens).float()
            return zones @ batch["slices"].float() / zones.sum(-1, keepdim=True)
        return glm.encode(batch["slices"], batch["z_mm"], batch["mask"])[0].float().cpu()

    return concat(map_batches(sharding, len(data), batch_size, features))


@torch.inference_mode()
def label_token_oracle(
    glm, train_zones: torch.Tensor, train_labels: np.ndarray, labels: np.ndarray
) -> torch.Tensor:
    """Visual tokens built from ground-truth labels (``graftkit eval --tokens oracle``).

    A least-squares map from a label vector (plus a bias) to the K zone tokens is fitted on the
    training split (``train_zones [n, K, d_v]``); the zone tokens of a volume are that map
    applied to its true ``labels``: E[zone tokens | labels], with none of the noise, severity or
    patient variation of real tokens. They pass through the predictor and calibrator like real
    ones. Returns ``[m, K, d_l]``. Not a ceiling of the decoder: it was never trained on such
    tokens, and generation from them can score below the real tokens (docs/evaluation.md,
    "Tokens built from the labels: not a ceiling").
    """
    glm.eval()
    n, k, d = train_zones.shape
    design = torch.cat([torch.ones(n, 1), torch.as_tensor(train_labels, dtype=torch.float32)], 1)
    coef = torch.linalg.lstsq(design.double(), train_zones.reshape(n, k * d).double()).solution
    query = torch.as_tensor(labels, dtype=torch.float64)
    zones = (torch.cat([torch.ones(len(query), 1, dtype=torch.float64), query], 1) @ coef).float()
    weight = next(glm.predictor.parameters())
    zones = zones.view(len(query), k, d).to(device=weight.device, dtype=weight.dtype)
    return glm.calibrator(glm.predictor(zones)).float().cpu()


def ablate(tokens: torch.Tensor, mode: str, seed: int = 0) -> torch.Tensor:
    """Apply one of :data:`ABLATIONS` to a stack of visual tokens ``[n, K, d]``."""
    if mode == "real":
        return tokens
    if mode == "zero":
        return torch.zeros_like(tokens)
    if mode == "shuffle":
        return tokens.roll(1, dims=0) if tokens.shape[0] > 1 else torch.zeros_like(tokens)
    if mode == "random":
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(tokens.shape, generator=g)
        scale = tokens.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return noise * scale
    raise ValueError(f"unknown ablation {mode!r}; choose from {ABLATIONS}")


def generation_settings(generation: Any, greedy: bool = False) -> dict[str, Any]:
    """``generate`` keyword arguments from the ``eval.generation`` config section.

    ``greedy`` decodes greedily (no sampling, one beam) whatever the config says. Without sampling
    ``temperature`` and ``top_p`` are left out, so transformers does not warn that they are unused.
    """
    gen = generation.model_dump() if hasattr(generation, "model_dump") else dict(generation)
    if greedy:
        gen.update(do_sample=False, num_beams=1)
    if not gen.get("do_sample", True):
        gen.pop("temperature", None)
        gen.pop("top_p", None)
    return gen


@torch.inference_mode()
def generate_reports(
    glm,
    tokenizer,
    prompt: str | ChatPrompt,
    tokens: torch.Tensor,
    generation: dict[str, Any],
    batch_size: int = 16,
    seed: int = 0,
    progress: Any = None,
    description: str = "generate",
    sharding: Sharding | None = None,
) -> list[str]:
    """Generate one report per row of ``tokens`` with left-padded prompts.

    Batch b (rows ``b·batch_size`` onwards) is sampled from ``torch.manual_seed(unit_seed(seed,
    b))``: a report's randomness depends on its batch's index alone, not on the batches decoded
    before it, so a volume gets the same report whichever process decodes its batch. With
    ``sharding`` each process decodes its batches and every process gets all reports; a sharded
    model (``sharding.synced``) decodes with ``synced_gpus`` (:mod:`graftkit.eval.shard`).
    """
    glm.eval()
    k = tokens.shape[1]
    prompt_enc = encode_chat(tokenizer, prompt, None, k)
    sharding = sharding or SINGLE
    if sharding.synced:
        generation = {**generation, "synced_gpus": True}
    spans = batch_spans(tokens.shape[0], batch_size)
    total = sum(spans[u][1] - spans[u][0] for u in sharding.units(len(spans)))
    task = progress.add_task(description, total=total, info="") if progress else None

    def decode(index: int, start: int, stop: int) -> list[str]:
        torch.manual_seed(unit_seed(seed, index))
        chunk = tokens[start:stop]
        enc = pad_batch([prompt_enc] * chunk.shape[0], tokenizer.pad_token_id, side="left")
        out = glm.generate(
            visual_tokens=chunk,
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **generation,
        )
        new = out[:, enc["input_ids"].shape[1] :]
        if task is not None:
            progress.advance(task, chunk.shape[0])
        return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]

    return concat(map_batches(sharding, tokens.shape[0], batch_size, decode, collective=True))


def label_matrix(volumes: Sequence[Volume]) -> np.ndarray:
    return np.stack([np.asarray(v.labels, dtype=np.int64) for v in volumes])


def label_scores(
    truth: np.ndarray, predicted: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Macro / per-class F1, precision and recall (:func:`~graftkit.eval.metrics.multilabel_scores`)
    with micro and support-weighted F1 and the CRG score beside them (``crg`` is None where it is
    undefined: no positive label, or every label positive)."""
    from graftkit.eval.metrics import crg_score, f1_averages, multilabel_scores

    scores = multilabel_scores(truth, predicted, class_names)
    averages = f1_averages(truth, predicted)
    scores["micro_f1"] = averages["micro_f1"]
    scores["weighted_f1"] = averages["weighted_f1"]
    positives = int(np.asarray(truth).sum())
    defined = 0 < positives < np.asarray(truth).size
    scores["crg"] = crg_score(truth, predicted)["crg"] if defined else None
    return scores


def generation_scores(
    extractor, texts: Sequence[str], volumes: Sequence[Volume], class_names: list[str]
) -> dict:
    """:func:`label_scores` of the labels extracted from generated text."""
    predicted = extractor.extract(list(texts))
    return label_scores(label_matrix(volumes), predicted, class_names)
