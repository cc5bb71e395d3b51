"""Load a local causal-LM directory (the language prior or e.g. Llama-3.2-3B-Instruct) offline.

Whatever the directory, the curriculum gets the same contract: a pad token, left padding for
batched generation, a chat template, and the visual placeholder as one special token whose
embedding row the graft overwrites (docs/design.md, "Grafting into a Hugging Face decoder").
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from graftkit.lm.tokenizer import FALLBACK_CHAT_TEMPLATE, VISUAL_TOKEN
from graftkit.progress import library_bars

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LLMLoadError(ValueError):
    """A directory that is not a loadable local causal LM; the message names the path and why."""


@contextlib.contextmanager
def hf_progress_bars(enabled: bool) -> Iterator[None]:
    """Turn transformers' own tqdm bars (weight loading/saving) on or off for a block."""
    before = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


def _check_model_dir(path: Path) -> None:
    if not path.exists():
        raise LLMLoadError(f"LLM directory {path} does not exist")
    if not path.is_dir():
        raise LLMLoadError(f"LLM path {path} is a file, not a model directory")
    config = path / "config.json"
    if not config.is_file():
        raise LLMLoadError(f"{path} is not a Hugging Face model directory: it has no config.json")
    try:
        json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise LLMLoadError(f"{config} is unreadable: {err}") from None
    weights = [
        *path.glob("*.safetensors"),
        *path.glob("*.bin"),
        *path.glob("*.safetensors.index.json"),
    ]
    if not weights:
        raise LLMLoadError(f"{path} holds no model weights (*.safetensors or *.bin)")


#: Files up to this size are fingerprinted by content (config, tokenizer, chat template), larger
#: ones (weights) by size: reading gigabytes of weights to reopen a run would take minutes.
FINGERPRINT_HASH_LIMIT = 16 * 2**20


def llm_fingerprint(path: Path | str) -> dict[str, str]:
    """What identifies a local LLM folder cheaply: ``{file name: "sha256:HEX"}`` for each file
    of the folder up to :data:`FINGERPRINT_HASH_LIMIT` bytes and ``{file name: "bytes:N"}`` for
    each larger one; a run with ``--llm`` records it and is reopened only on the same folder."""
    import hashlib

    out = {}
    for file in sorted(Path(path).iterdir()):
        if not file.is_file():
            continue
        size = file.stat().st_size
        if size <= FINGERPRINT_HASH_LIMIT:
            out[file.name] = "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest()
        else:
            out[file.name] = f"bytes:{size}"
    return out


def add_special_tokens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tokens: Sequence[str]
) -> list[int]:
    """Make each of ``tokens`` one special token, growing the embeddings if the vocabulary grew.

    New rows start at the mean embedding (transformers' ``mean_resizing``), so an added
    placeholder does not perturb the LLM before the graft overwrites it. Returns the token ids.
    """
    missing = [t for t in tokens if len(tokenizer(t, add_special_tokens=False)["input_ids"]) != 1]
    if missing:
        tokenizer.add_special_tokens(
            {"extra_special_tokens": missing}, replace_extra_special_tokens=False
        )
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def load_llm(
    path: Path | str,
    dtype: str | torch.dtype = "float32",
    *,
    visual_token: str | None = VISUAL_TOKEN,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local causal LM and its tokenizer with ``local_files_only=True``.

    Args:
        path: a model directory (``config.json``, weights, tokenizer files).
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``.
        visual_token: added as a special token if the tokenizer lacks it (``None``: leave the
            vocabulary as it is).
        device: load the weights directly onto this device, in ``dtype`` (no float32 copy of
            the model on the host); ``None`` or a CPU device: the host.

    Returns:
        ``(model, tokenizer)``: the model in eval mode; the tokenizer with a pad token (EOS when it
        has none), ``padding_side="left"`` and a chat template (:data:`FALLBACK_CHAT_TEMPLATE`
        for a base model without one). The model's config and generation config carry the pad id.
    """
    path = Path(path).expanduser()
    _check_model_dir(path)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise LLMLoadError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
        dtype = DTYPES[dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise LLMLoadError(f"cannot load a tokenizer from {path}: {err}") from err
    try:
        with hf_progress_bars(enabled=library_bars()):
            placement = {}
            if device is not None and torch.device(device).type != "cpu":
                placement["device_map"] = {"": torch.device(device)}
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, local_files_only=True, **placement
            )
    except (OSError, ValueError, KeyError) as err:
        raise LLMLoadError(f"cannot load a causal LM from {path}: {err}") from err
    model.eval()

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise LLMLoadError(f"the tokenizer in {path} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    if visual_token is not None:
        add_special_tokens(model, tokenizer, [visual_token])
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
