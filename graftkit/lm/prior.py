"""The language prior: a small Llama-architecture LM pretrained on the cohort's raw reports.

docs/design.md ("Embedded default"): when no ``--llm`` is given, graftkit trains a byte-level BPE
tokenizer and a tiny ``LlamaForCausalLM`` on the training split's reports, so the curriculum
grafts into a decoder that already has a strong language prior, the prior that fights the visual
tokens in the paper. The result is an ordinary Hugging Face model directory that
:func:`graftkit.lm.load_llm` loads like any local LLM, cached by a content hash.

Each report is one document in the prior's chat format, an assistant turn
``BOS <|assistant|>\\n report EOS``, so the prior knows where a report starts and that EOS ends it
before the curriculum asks it for one after the visual user turn. Documents are packed into one
token stream and the model trains on random windows of ``max_length`` tokens.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_cosine_schedule_with_warmup,
)

import graftkit
from graftkit.config import PriorConfig
from graftkit.io import atomic_dir, remove_stale_temporaries
from graftkit.lm.chat import IGNORE_INDEX
from graftkit.lm.loading import hf_progress_bars
from graftkit.lm.tokenizer import CORE_SPECIAL_TOKENS, train_tokenizer

#: Bump when the prior's training or saved format changes: it is part of the cache key.
PRIOR_VERSION = "2"  # 2: the tokenizer gives a word its in-text token at the start of a text
MANIFEST = "prior.json"

#: ``progress(step, total_steps, loss)``; or pass a rich ``Progress`` (graftkit.progress.progress_bar).
ProgressCallback = Callable[[int, int, float], None]


def _documents(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]
) -> tuple[list[list[int]], int]:
    """Token ids of each text as an assistant turn, and the length of the shared turn prefix."""
    sentinel = tokenizer.apply_chat_template(
        [{"role": "assistant", "content": "\x00"}], tokenize=False
    )
    prefix = sentinel[: sentinel.index("\x00")]
    rendered = tokenizer.apply_chat_template(
        [[{"role": "assistant", "content": t}] for t in texts], tokenize=False
    )
    if not all(r.startswith(prefix) for r in rendered):
        raise ValueError(
            "the prior's chat template must put the same turn prefix before every report"
        )
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    bodies = tokenizer([r[len(prefix) :] for r in rendered], add_special_tokens=False)["input_ids"]
    return [prefix_ids + body for body in bodies], len(prefix_ids)


def _clean_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of documents, not one string")
    kept = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, not str")
        for special in CORE_SPECIAL_TOKENS:
            if special in text:
                raise ValueError(f"text {i} contains the reserved special token {special!r}")
        if text.strip():
            kept.append(text)
    if not kept:
        raise ValueError(f"no non-empty text among {len(texts)} to train the language prior on")
    return kept


def _llama_config(config: PriorConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"prior.hidden_size={config.hidden_size} is not divisible by "
            f"prior.num_attention_heads={config.num_attention_heads}"
        )
    if config.num_attention_heads % config.num_key_value_heads:
        raise ValueError(
            f"prior.num_attention_heads={config.num_attention_heads} is not divisible by "
            f"prior.num_key_value_heads={config.num_key_value_heads}"
        )
    if config.max_length > config.max_position_embeddings:
        raise ValueError(
            f"prior.max_length={config.max_length} exceeds "
            f"prior.max_position_embeddings={config.max_position_embeddings}"
        )
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )


class _Reporter:
    """Routes per-step losses to a rich ``Progress`` or a callback; silent when neither is given."""

    def __init__(self, progress: Any, total: int, every: int):
        self.progress, self.total, self.every = progress, total, max(1, every)
        self.task = None
        if progress is not None and hasattr(progress, "add_task"):
            self.task = progress.add_task("language prior", total=total, info="")

    def __call__(self, step: int, loss: float) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=step, info=f"loss {loss:.3f}")
        elif self.progress is not None and (step % self.every == 0 or step == self.total):
            self.progress(step, self.total, loss)


def train_prior(
    texts: Sequence[str],
    config: PriorConfig,
    output_dir: Path | str,
    progress: ProgressCallback | Any | None = None,
    *,
    log_every: int = 10,
) -> Path:
    """Train the tokenizer and the Llama-architecture prior on ``texts``; save them to ``output_dir``.

    Args:
        texts: training documents (the training split's raw reports); empty ones are skipped.
        config: sizes and optimisation (:class:`graftkit.config.PriorConfig`): AdamW with a cosine
            schedule (5% warm-up) for ``config.steps`` steps of ``batch_size`` windows of
            ``max_length`` tokens, gradient norm clipped at 1.
        output_dir: written as a Hugging Face model directory (weights, config, tokenizer with
            chat template, ``generation_config.json``) plus ``prior.json`` with the loss history.
        progress: ``progress(step, total, loss)`` every ``log_every`` steps, or a rich
            ``Progress`` that gets a "language prior" task; ``None`` reports nothing.

    Returns:
        ``output_dir``.
    """
    started = time.perf_counter()
    texts = _clean_texts(texts)
    output_dir = Path(output_dir)
    generator = torch.Generator().manual_seed(config.seed)

    tokenizer = train_tokenizer(texts, config.vocab_size)
    documents, _ = _documents(tokenizer, texts)
    stream = torch.tensor([t for doc in documents for t in doc], dtype=torch.long)
    window = min(config.max_length, len(stream))

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(_llama_config(config, tokenizer))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    schedule = get_cosine_schedule_with_warmup(
        optimizer,
        num_warmup_steps=math.ceil(0.05 * config.steps),
        num_training_steps=max(1, config.steps),
    )
    report = _Reporter(progress, config.steps, log_every)
    offsets = torch.arange(window)
    history: list[tuple[int, float]] = []
    model.train()
    for step in range(1, config.steps + 1):
        starts = torch.randint(
            0, len(stream) - window + 1, (config.batch_size, 1), generator=generator
        )
        batch = stream[starts + offsets]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        value = loss.item()
        if step % max(1, log_every) == 0 or step == config.steps:
            history.append((step, value))
        report(step, value)
    model.eval()

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    with hf_progress_bars(enabled=False):
        model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    manifest = {
        "graftkit_version": graftkit.__version__,
        "prior_version": PRIOR_VERSION,
        "config": config.model_dump(mode="json"),
        "num_texts": len(texts),
        "num_tokens": len(stream),
        "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "loss_history": history,
        "wall_s": round(time.perf_counter() - started, 2),
    }
    (output_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return output_dir


def prior_cache_key(texts: Sequence[str], config: PriorConfig) -> str:
    """SHA-256 over the prior code version, the config and every text (length-prefixed)."""
    digest = hashlib.sha256()
    header = {
        "graftkit": graftkit.__version__,
        "prior": PRIOR_VERSION,
        "config": config.model_dump(mode="json"),
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for text in texts:
        data = text.encode()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def build_or_load_prior(
    texts: Sequence[str],
    config: PriorConfig,
    cache_dir: Path | str,
    progress: ProgressCallback | Any | None = None,
) -> Path:
    """The prior directory for ``(texts, config)``, trained once and cached by :func:`prior_cache_key`.

    The prior is built in a temporary sibling directory and renamed into place when complete
    (:func:`graftkit.io.atomic_dir`), so a killed build never leaves a directory that a later call
    would use. Builds of one key are serialised by a :class:`filelock.FileLock` on
    ``cache_dir/.prior-<hex>.lock`` (the OS releases it when its holder dies): a second process
    waits for the first and then uses its directory, and whoever holds the lock removes the
    temporary folders of killed builds.
    """
    cache_dir = Path(cache_dir)
    key = prior_cache_key(texts, config)
    final = cache_dir / f"prior-{key[:16]}"
    if final.exists():  # no lock needed to read a finished prior (the cache may be read-only)
        _check_cached(final, key)
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(cache_dir / f".{final.name}.lock"):
        if final.exists():  # built by the process that held the lock before us
            _check_cached(final, key)
            return final
        remove_stale_temporaries(final)  # no build of this key runs: we hold its lock
        with atomic_dir(final) as tmp:
            train_prior(texts, config, tmp, progress)
            data = json.loads((tmp / MANIFEST).read_text())
            data["key"] = key
            (tmp / MANIFEST).write_text(json.dumps(data, indent=2))
    return final


def prior_key(directory: Path | str) -> str | None:
    """The cache key a prior folder's ``prior.json`` records (:func:`prior_cache_key`); ``None``
    when the folder holds no complete prior."""
    try:
        key = json.loads((Path(directory) / MANIFEST).read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) and (Path(directory) / "config.json").is_file() else None


def copy_prior(source: Path | str, target: Path | str) -> Path:
    """Copy the prior folder ``source`` to ``target`` (a run's own copy), replacing what
    ``target`` held; written through :func:`graftkit.io.atomic_dir`, so ``target`` is a complete
    prior or absent."""
    target = Path(target)
    if target.exists():
        shutil.rmtree(target)
    with atomic_dir(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    return target


def _check_cached(final: Path, key: str) -> None:
    try:
        cached_key = json.loads((final / MANIFEST).read_text()).get("key")
    except (OSError, json.JSONDecodeError):
        cached_key = None
    if cached_key != key:
        raise RuntimeError(
            f"cached prior {final} does not hold a complete prior for these inputs "
            f"({MANIFEST} missing or for another key); delete it to rebuild"
        )


@torch.no_grad()
def language_model_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int = 256,
    batch_size: int = 16,
) -> float:
    """Mean next-token cross-entropy (nats) on ``texts`` as the prior sees them in training.

    Each text is one document in the prior's format; the loss counts the report tokens and the
    closing EOS, not the fixed turn prefix. ``ln(vocab_size)`` is the uniform baseline.
    """
    documents, prefix = _documents(tokenizer, _clean_texts(texts))
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(documents), batch_size):
        chunk = [doc[:max_length] for doc in documents[i : i + batch_size]]
        width = max(len(doc) for doc in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, doc in enumerate(chunk):
            ids[b, : len(doc)] = torch.tensor(doc)
            labels[b, prefix : len(doc)] = torch.tensor(doc[prefix:])
            mask[b, : len(doc)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            target.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        ).item()
        count += int((target != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / max(1, count)
