"""Graft the bridge into any Hugging Face causal-LM decoder (docs/design.md, "Grafting into a Hugging
Face decoder").

``graft(model, config, tokenizer)`` returns a :class:`GraftedLM` that

- adds the ``<|visual_region|>`` placeholder token (tokenizer + embedding rows);
- replaces the K placeholder embeddings of each prompt by the calibrated visual tokens Ṽ
  (``inputs_embeds.masked_scatter``, from a forward hook on the input-embedding module);
- runs a per-layer projector + :class:`GatedCrossAttention` adapter before each chosen decoder
  layer (a forward pre-hook: the HF class and its state-dict keys stay untouched);
- optionally applies peft LoRA to the LLM; the LLM's own weights are always frozen.

The decoder's layer list is found generically (the ``nn.ModuleList`` of ``num_hidden_layers``
blocks holding most parameters), never by model family.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import ConfigDict, Field, model_validator
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from graftkit.bridge.heads import BridgeHeads
from graftkit.bridge.predictor import NormCalibrator, Predictor, mean_norm
from graftkit.bridge.xattn import (
    AdapterHook,
    ContextSlot,
    GatedCrossAttention,
    hooks_outside_checkpoint,
    identity_projector,
    match_batch,
)
from graftkit.bridge.zones import ZoneCompressor, ZoneCompressorConfig
from graftkit.checkpoint import check_folder
from graftkit.config import PARAMETER_GROUPS, BridgeSettings, CompressorSettings, LoraSettings
from graftkit.distributed import shard_like

__all__ = [
    "BRIDGE_GROUPS",
    "VISUAL_TOKEN",
    "GraftConfig",
    "GraftedLM",
    "LoraSettings",
    "expand_visual_placeholders",
    "find_decoder_layers",
    "graft",
    "resolve_xattn_layers",
]

VISUAL_TOKEN = "<|visual_region|>"
#: the named parameter sets a phase trains or freezes (one definition: graftkit.config)
BRIDGE_GROUPS = PARAMETER_GROUPS
CONFIG_FILE = "graft_config.json"
BRIDGE_FILE = "bridge.safetensors"
TOKENIZER_DIR = "tokenizer"
#: ``bridge.safetensors`` entries holding the embedding rows added to the base's vocabulary
VOCABULARY_PREFIX = "vocabulary."
_DEFAULT_COMPRESSOR = f"{ZoneCompressor.__module__}.{ZoneCompressor.__qualname__}"


@contextmanager
def _peft_checkpointing_probe():
    """Around peft's ``PeftModel`` construction only: silence transformers' FutureWarning for the
    deprecated ``is_gradient_checkpointing`` property, which peft (0.21) reads on every wrap
    (``peft_model.py``: ``getattr(model, "is_gradient_checkpointing", True)``). The read is
    peft's, not graftkit's; nothing else is filtered, and only for the duration of the call."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


class GraftConfig(BridgeSettings):
    """Everything :func:`graft` builds; saved as JSON next to the bridge weights.

    The bridge's settings are :class:`~graftkit.config.BridgeSettings` (one definition, shared
    with a run's ``bridge`` section); this adds what a graft learns from its data and LLM. Every
    field, its default and its meaning: docs/bridge.md, "GraftConfig".

    The compressor settings (:class:`~graftkit.config.CompressorSettings`: ``num_zones``,
    ``num_heads``, ...) build the :class:`ZoneCompressor` when :func:`graft` gets no
    ``compressor``. With a compressor passed, the compressor is their source: the settings it
    declares replace those left unset here, and one set here to another value is refused.
    """

    model_config = ConfigDict(extra="forbid", from_attributes=True)

    visual_dim: int = Field(gt=0, description="d_v, width of the encoder's slice embeddings")
    jepa_dim: int = Field(
        256, gt=0, description="width of the JEPA head's output: the whitened text space's"
    )
    xattn_dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout on the cross-attention adapters' attention weights"
    )
    num_classes: int = Field(18, gt=0, description="C, outputs of the cls, mil and llm_cls heads")
    jepa_hidden: int | None = Field(None, gt=0, description="JEPA head hidden width; None = d_l")
    lora: LoraSettings | None = Field(
        default_factory=LoraSettings, description="peft LoRA on the LLM; None = no LoRA"
    )
    visual_token: str = Field(
        VISUAL_TOKEN, description="the placeholder token whose K copies take the visual tokens"
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_fields(cls, data: Any) -> Any:
        # grafts saved before the settings were shared call the compressor's dropout
        # ``compressor_dropout``; they still load
        if isinstance(data, dict) and "compressor_dropout" in data:
            data = dict(data)
            data.setdefault("dropout", data.pop("compressor_dropout"))
        return data


def resolve_xattn_layers(config: GraftConfig, depth: int) -> list[int]:
    """Adapter layers for a decoder of ``depth`` layers (0-based; the adapter runs before the layer).

    Explicit ``xattn_layers`` are checked against the depth; otherwise each paper layer ``l`` of a
    ``paper_depth``-layer model maps to ``round(l·depth/paper_depth)`` clamped to ``[0, depth-1]``
    (7, 14, 21 of 28 -> 1, 2, 3 of 4; 4, 8, 12 of 16).
    """
    if config.xattn_layers is not None:
        bad = [layer for layer in config.xattn_layers if layer >= depth]
        if bad:
            raise ValueError(
                f"GraftConfig.xattn_layers {bad} out of range for a {depth}-layer decoder"
            )
        return sorted(set(config.xattn_layers))
    mapped = (math.floor(layer * depth / config.paper_depth + 0.5) for layer in config.paper_layers)
    return sorted({min(depth - 1, max(0, m)) for m in mapped})


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's block list: the ``nn.ModuleList`` of ``num_hidden_layers`` same-class modules
    holding most parameters (any family: Llama, Qwen2, Mistral, ...)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    depth = getattr(config, "num_hidden_layers", None)
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if depth is not None and len(module) != depth:
            continue
        size = sum(p.numel() for p in module.parameters())
        candidates.append((size, name, module))
    if not candidates:
        raise ValueError(
            f"graft: found no nn.ModuleList of {depth} decoder layers in {type(model).__name__}"
        )
    return max(candidates, key=lambda c: c[0])[2]


def expand_visual_placeholders(
    text: str, k: int, token: str = VISUAL_TOKEN, marker: str = "<image>"
) -> str:
    """Put exactly ``k`` visual placeholder tokens into a prompt, before tokenisation.

    - one ``marker`` (default ``"<image>"``) is replaced by ``k`` tokens (more than one: error);
    - a single ``token`` already in the text is expanded to ``k``; ``k`` of them are left as they are;
    - otherwise the ``k`` tokens are prepended.
    Any other count of ``token`` raises a ``ValueError``.
    """
    if k <= 0:
        raise ValueError(f"expand_visual_placeholders: k={k} must be > 0")
    run = token * k
    markers, present = (text.count(marker) if marker else 0), text.count(token)
    if markers > 1:
        raise ValueError(
            f"expand_visual_placeholders: {markers} {marker!r} markers in the prompt, expected one"
        )
    if markers == 1:
        if present:
            raise ValueError(
                f"expand_visual_placeholders: prompt holds both {marker!r} and {token!r}"
            )
        return text.replace(marker, run)
    if present == k:
        return text
    if present == 1:
        return text.replace(token, run)
    if present:
        raise ValueError(
            f"expand_visual_placeholders: prompt holds {present} {token!r}, expected 0, 1 or {k}"
        )
    return run + text


def _compressor_settings(compressor: nn.Module) -> dict[str, Any]:
    """The :class:`~graftkit.config.CompressorSettings` a compressor module declares: all of them
    for one with such a ``config`` (a :class:`ZoneCompressor`), else ``num_zones`` if it has the
    attribute, else none."""
    own = getattr(compressor, "config", None)
    if isinstance(own, CompressorSettings):
        return own.model_dump(include=set(CompressorSettings.model_fields))
    if hasattr(compressor, "num_zones"):
        return {"num_zones": int(compressor.num_zones)}
    return {}


def _agree_with_compressor(config: GraftConfig, compressor: nn.Module) -> GraftConfig:
    """``config`` with the compressor's declared settings; a setting the caller gave ``config``
    explicitly with another value raises a ``ValueError`` naming both (one source of truth)."""
    declared = _compressor_settings(compressor)
    conflicts = {
        k: v
        for k, v in declared.items()
        if k in config.model_fields_set and getattr(config, k) != v
    }
    if conflicts:
        listing = ", ".join(
            f"GraftConfig.{k}={getattr(config, k)!r} but the compressor has {k}={v!r}"
            for k, v in conflicts.items()
        )
        raise ValueError(
            f"graft: {listing}; set them alike, or leave them unset in GraftConfig to take the "
            f"compressor's ({type(compressor).__name__})"
        )
    if all(getattr(config, k) == v for k, v in declared.items()):
        return config
    return GraftConfig.model_validate({**config.model_dump(exclude_unset=True), **declared})


def _check_sizes(config: GraftConfig, hidden: int, build_compressor: bool) -> None:
    """The width constraints of the modules :func:`graft` builds, checked before the model is
    touched and named by the :class:`GraftConfig` field (not by the module that would fail)."""
    if build_compressor:
        if config.visual_dim % 2:
            raise ValueError(
                f"GraftConfig.visual_dim={config.visual_dim} must be even (the zone compressor's "
                "sinusoidal z encoding)"
            )
        if config.visual_dim % config.num_heads:
            raise ValueError(
                f"GraftConfig.num_heads={config.num_heads} (zone compressor heads, default 16) does "
                f"not divide visual_dim={config.visual_dim}; set num_heads to a divisor of it"
            )
    if hidden % config.xattn_heads:
        raise ValueError(
            f"GraftConfig.xattn_heads={config.xattn_heads} (cross-attention heads, default 8) does "
            f"not divide the LLM's hidden size {hidden}; set xattn_heads to a divisor of it"
        )


def _disk_vocab_size(model: nn.Module) -> int | None:
    """The vocabulary size in the ``config.json`` of the local folder ``model`` was loaded from
    (``None`` for a model built from a config or loaded by hub id): the rows the base had before
    any token was added to it (by :func:`graftkit.lm.load_llm` or by :func:`graft`)."""
    config = getattr(model, "config", None)
    path = getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None)
    if not path or not (Path(path) / "config.json").is_file():
        return None
    try:
        text = json.loads((Path(path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    size = text.get("vocab_size", (text.get("text_config") or {}).get("vocab_size"))
    return size if isinstance(size, int) and size > 0 else None


def _grafted_already(model: nn.Module) -> bool:
    """Whether ``model``'s input embeddings carry the placeholder hook of an earlier graft."""
    hooks = model.get_input_embeddings()._forward_hooks.values()
    return any(isinstance(getattr(hook, "__self__", None), GraftedLM) for hook in hooks)


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


class GraftedLM(nn.Module):
    """A decoder LLM with the bridge grafted in; build it with :func:`graft`.

    Attributes: ``llm`` (the possibly peft-wrapped HF model), ``tokenizer``, ``visual_token_id``
    (the placeholder's id in the tokenizer and the embedding matrix), ``num_visual_tokens`` (K),
    ``base_vocab_size`` (embedding rows of the base before a token was added), ``config`` (the
    :class:`GraftConfig` as built, compressor settings included), ``compressor``, ``predictor``,
    ``calibrator``, ``projectors`` and ``xattn`` (``ModuleDict`` keyed by layer index), ``heads``,
    ``xattn_layers``.

    Right after construction every bridge group and LoRA are trainable and the base LLM is
    frozen; :meth:`set_trainable` selects the groups a phase trains.
    """

    def __init__(
        self,
        model: nn.Module,
        config: GraftConfig,
        tokenizer: Any | None = None,
        compressor: nn.Module | None = None,
        *,
        visual_token_id: int | None = None,
        lora_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        if not hasattr(model, "get_input_embeddings") or not hasattr(model, "generate"):
            raise TypeError(f"graft: {type(model).__name__} is not a Hugging Face causal LM")
        if _is_peft(model):
            raise TypeError("graft: pass the base model; graft applies LoRA itself (config.lora)")
        if _grafted_already(model):
            raise ValueError(
                f"graft: {type(model).__name__} already carries a graft (its input embeddings hold "
                "the placeholder hook); graft a freshly loaded, unmodified base model"
            )
        if compressor is not None:
            config = _agree_with_compressor(config, compressor)
        _check_sizes(config, model.get_input_embeddings().weight.shape[1], compressor is None)
        self.config = config
        self.tokenizer = tokenizer
        rows = model.get_input_embeddings().weight.shape[0]
        self.base_vocab_size = min(rows, _disk_vocab_size(model) or rows)
        self.visual_token_id = self._add_visual_token(model, tokenizer, visual_token_id)
        embed = model.get_input_embeddings()
        hidden, device, dtype = embed.weight.shape[1], embed.weight.device, embed.weight.dtype
        for p in model.parameters():
            p.requires_grad_(False)
        if lora_dir is not None:
            from peft import PeftModel

            with _peft_checkpointing_probe():
                model = PeftModel.from_pretrained(model, str(lora_dir), is_trainable=True)
        elif config.lora is not None:
            from peft import LoraConfig, get_peft_model

            lora = config.lora
            with _peft_checkpointing_probe():
                model = get_peft_model(
                    model,
                    LoraConfig(
                        task_type="CAUSAL_LM",
                        r=lora.r,
                        lora_alpha=lora.alpha,
                        lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules),
                    ),
                )
        self.llm = model
        self.hidden_size = hidden

        if compressor is None:
            compressor = ZoneCompressor(
                config.visual_dim, **config.model_dump(include=set(CompressorSettings.model_fields))
            )
        self.compressor = compressor
        self.num_visual_tokens = int(getattr(compressor, "num_zones", config.num_zones))
        self.predictor = Predictor(config.visual_dim, hidden, config.predictor_dropout)
        self.calibrator = NormCalibrator()
        layers = find_decoder_layers(self.llm)
        self.xattn_layers = resolve_xattn_layers(config, len(layers))
        self.projectors = nn.ModuleDict(
            {str(i): identity_projector(hidden) for i in self.xattn_layers}
        )
        self.xattn = nn.ModuleDict(
            {
                str(i): GatedCrossAttention(
                    hidden, config.xattn_heads, dropout=config.xattn_dropout
                )
                for i in self.xattn_layers
            }
        )
        self.heads = BridgeHeads(hidden, config.num_classes, config.jepa_dim, config.jepa_hidden)
        for name in ("compressor", "predictor", "calibrator", "projectors", "xattn", "heads"):
            getattr(self, name).to(device=device, dtype=dtype)

        self._slot = ContextSlot()
        self._hooks = [self.llm.get_input_embeddings().register_forward_hook(self._scatter_visual)]
        for i in self.xattn_layers:
            hook = AdapterHook(i, self._slot, self.projectors[str(i)], self.xattn[str(i)])
            self._hooks.append(layers[i].register_forward_pre_hook(hook, with_kwargs=True))
        self._layers = [layers[i] for i in self.xattn_layers]  # plain list: not registered twice

    # -- construction helpers ----------------------------------------------------------------
    def _add_visual_token(
        self, model: nn.Module, tokenizer: Any | None, fixed_id: int | None
    ) -> int:
        token = self.config.visual_token
        if tokenizer is not None:
            if token not in tokenizer.get_vocab():
                from transformers import AddedToken

                tokenizer.add_tokens(
                    [AddedToken(token, special=True, normalized=False)], special_tokens=True
                )
            token_id = tokenizer.convert_tokens_to_ids(token)
            if fixed_id is not None and fixed_id != token_id:
                raise ValueError(
                    f"graft: the tokenizer maps {token!r} to id {token_id}, the checkpoint expects {fixed_id}"
                )
            rows = max(len(tokenizer), token_id + 1)
        else:
            rows = model.get_input_embeddings().weight.shape[0]
            token_id = rows if fixed_id is None else fixed_id
            rows = max(rows, token_id + 1)
        old = model.get_input_embeddings().weight.shape[0]
        if rows > old:
            self._resize(model, old, rows)
        return int(token_id)

    @staticmethod
    @torch.no_grad()
    def _resize(model: nn.Module, old: int, rows: int) -> None:
        """Add embedding rows, initialised deterministically to the mean of the existing rows (so a
        re-graft of the same base model reproduces them exactly)."""
        model.resize_token_embeddings(rows, mean_resizing=False)
        matrices = {id(model.get_input_embeddings().weight): model.get_input_embeddings().weight}
        out = model.get_output_embeddings()
        if out is not None:
            matrices.setdefault(id(out.weight), out.weight)
        for weight in matrices.values():
            weight[old:] = weight[:old].mean(dim=0)

    # -- visual input --------------------------------------------------------------------------
    def _check_visual(self, visual_tokens: Tensor | None) -> Tensor | None:
        if visual_tokens is None:
            return None
        shape = tuple(visual_tokens.shape)
        if visual_tokens.dim() != 3 or shape[1:] != (self.num_visual_tokens, self.hidden_size):
            raise ValueError(
                f"visual_tokens must be [B, {self.num_visual_tokens}, {self.hidden_size}], got {shape}"
            )
        weight = self.llm.get_input_embeddings().weight
        return visual_tokens.to(device=weight.device, dtype=weight.dtype)

    def _to_bridge_device(self, *inputs: Any) -> tuple[Any, ...]:
        """Slices (a tensor or a list of tensors), positions and masks on the bridge's device."""
        from accelerate.utils import send_to_device

        return send_to_device(inputs, next(self.predictor.parameters()).device)

    def _to_llm_device(self, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
        """Token ids, masks and labels on the LLM's device, so callers that tokenize on the host
        (evaluation, generation) work on an accelerator too."""
        device = self.llm.get_input_embeddings().weight.device
        return tuple(t.to(device) if isinstance(t, Tensor) else t for t in tensors)

    def _scatter_visual(
        self, module: nn.Module, args: tuple[Any, ...], output: Tensor
    ) -> Tensor | None:
        """Forward hook on the input embeddings: ``inputs_embeds.masked_scatter`` of Ṽ."""
        if not args or not isinstance(args[0], Tensor):
            return None
        is_visual = args[0] == self.visual_token_id
        if not bool(is_visual.any()):
            return None
        counts = is_visual.sum(dim=-1).reshape(-1)
        context = self._slot.current
        if context is None:
            raise ValueError(
                f"input_ids hold {counts.tolist()} {self.config.visual_token} placeholders per row "
                "but no visual_tokens were given"
            )
        wrong = (counts != self.num_visual_tokens).nonzero()
        if wrong.numel():
            row = int(wrong[0, 0])
            raise ValueError(
                f"row {row} of input_ids holds {int(counts[row])} {self.config.visual_token} placeholders, "
                f"expected K={self.num_visual_tokens} (expand prompts with expand_visual_placeholders)"
            )
        tokens = match_batch(context.tokens, counts.numel()).to(output.dtype)
        return output.masked_scatter(is_visual.unsqueeze(-1), tokens)

    def expand_prompt(self, text: str, marker: str = "<image>") -> str:
        """:func:`expand_visual_placeholders` with this graft's K and token."""
        return expand_visual_placeholders(
            text, self.num_visual_tokens, self.config.visual_token, marker
        )

    def encode(
        self, slices: Tensor | list[Tensor], z_mm: Tensor | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Slices -> ``(zones [B, K, d_v], tokens [B, K, d_l])``: compressor -> predictor -> calibrator.

        Inputs are moved to the bridge's device, so callers that collate on the host (evaluation,
        recalibration) work on an accelerator too."""
        slices, z_mm, mask = self._to_bridge_device(slices, z_mm, mask)
        zones = self.compressor(slices, z_mm=z_mm, mask=mask)
        return zones, self.calibrator(self.predictor(zones))

    def text_embedding_norm(self) -> float:
        """Mean L2 norm of the LLM's text-token input embeddings (the visual row excluded)."""
        weight = self.llm.get_input_embeddings().weight
        keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
        keep[self.visual_token_id] = False
        return float(mean_norm(weight[keep]))

    @torch.no_grad()
    def recalibrate(
        self, slices: Tensor | list[Tensor], z_mm: Tensor | None = None, mask: Tensor | None = None
    ) -> float:
        """``NormCalibrator.recalibrate`` against this LLM's text embeddings on a batch of slices."""
        slices, z_mm, mask = self._to_bridge_device(slices, z_mm, mask)
        zones = self.compressor(slices, z_mm=z_mm, mask=mask)
        return self.calibrator.recalibrate(self.text_embedding_norm(), self.predictor(zones))

    # -- language model ------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        visual_tokens: Tensor | None = None,
        labels: Tensor | None = None,
        **kwargs: Any,
    ):
        """The HF causal-LM forward with Ṽ grafted in; returns its ``CausalLMOutputWithPast``.

        Placeholder positions in ``labels`` are set to -100. With ``visual_tokens=None`` and no
        placeholders this is exactly the (LoRA-adapted) LM.
        """
        visual_tokens = self._check_visual(visual_tokens)
        input_ids, attention_mask, labels = self._to_llm_device(input_ids, attention_mask, labels)
        if labels is not None and input_ids is not None:
            labels = labels.masked_fill(input_ids == self.visual_token_id, -100)
        with self._slot.bind(visual_tokens):
            return self.llm(
                input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs
            )

    @torch.no_grad()
    def generate(
        self,
        visual_tokens: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        visual: Tensor | None = None,
        xattn_on_decode: bool = True,
        **generation_kwargs: Any,
    ) -> Any:
        """``llm.generate`` with Ṽ bound for the whole call (``visual`` is an alias).

        Every HF generation option works (sampling, top_p, repetition_penalty,
        no_repeat_ngram_size, beams, ``num_return_sequences``): the rows that generation expands
        get their item's visual tokens. The placeholder token is never generated.
        ``xattn_on_decode=False`` skips the adapters on single-token decode steps: the paper's
        2.5x F1 bug, kept only as an ablation (``graftkit study``).
        """
        if visual is not None:
            if visual_tokens is not None:
                raise ValueError("generate: pass visual_tokens or visual, not both")
            visual_tokens = visual
        visual_tokens = self._check_visual(visual_tokens)
        input_ids, attention_mask = self._to_llm_device(input_ids, attention_mask)
        suppress = set(generation_kwargs.pop("suppress_tokens", None) or [])
        generation_kwargs["suppress_tokens"] = sorted(suppress | {self.visual_token_id})
        if "pad_token_id" not in generation_kwargs and self.tokenizer is not None:
            pad = self.tokenizer.pad_token_id
            generation_kwargs["pad_token_id"] = (
                pad if pad is not None else self.tokenizer.eos_token_id
            )
        with self._slot.bind(visual_tokens, decode_steps=xattn_on_decode):
            return self.llm.generate(
                input_ids=input_ids, attention_mask=attention_mask, **generation_kwargs
            )

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None
    ) -> None:
        """Activation checkpointing of the LLM's layers. Where a version of transformers would
        checkpoint around module hooks, the adapter layers are left unchecked (their pre-hook needs
        the call's visual context, which is gone during the backward recomputation)."""
        enable = getattr(self.llm, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs=gradient_checkpointing_kwargs)
        else:
            self.llm.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=gradient_checkpointing_kwargs
            )
        for layer in self._layers:
            if hasattr(layer, "gradient_checkpointing") and not hooks_outside_checkpoint(layer):
                layer.gradient_checkpointing = False

    def merge_lora(self) -> None:
        """Merge LoRA into the base weights (inference/benchmarks); the ``lora`` group becomes empty."""
        if _is_peft(self.llm):
            self.llm = self.llm.merge_and_unload()
            for p in self.llm.parameters():
                p.requires_grad_(False)

    # -- parameter groups ----------------------------------------------------------------------
    def _group_modules(self) -> dict[str, nn.Module]:
        return {
            "compressor": self.compressor,
            "predictor": self.predictor,
            "calibrator": self.calibrator,
            "projectors": self.projectors,
            "xattn": self.xattn,
            "heads": self.heads,
        }

    @staticmethod
    def _check_groups(groups: Iterable[str] | None) -> list[str]:
        if groups is None:
            return list(BRIDGE_GROUPS)
        groups = [groups] if isinstance(groups, str) else list(groups)
        unknown = [g for g in groups if g not in BRIDGE_GROUPS]
        if unknown:
            raise ValueError(f"unknown parameter group(s) {unknown}; groups: {list(BRIDGE_GROUPS)}")
        return groups

    def parameter_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """``{group: {name: parameter}}`` for the seven bridge groups (docs/design.md curriculum table)."""
        modules = self._group_modules()
        out: dict[str, dict[str, nn.Parameter]] = {}
        for group in BRIDGE_GROUPS:
            if group == "lora":
                out[group] = {
                    f"lora.{n}": p for n, p in self.llm.named_parameters() if "lora_" in n
                }
            else:
                out[group] = {f"{group}.{n}": p for n, p in modules[group].named_parameters()}
        return out

    def set_trainable(self, groups: Iterable[str]) -> None:
        """Train exactly the named groups; everything else (the LLM base always) is frozen."""
        groups = self._check_groups(groups)
        for p in self.parameters():
            p.requires_grad_(False)
        named = self.parameter_groups()
        for group in groups:
            for p in named[group].values():
                p.requires_grad_(True)

    def inventory(self) -> dict[str, dict[str, int]]:
        """``{group: {"tensors", "parameters", "trainable"}}`` counts per group."""
        return {
            group: {
                "tensors": len(params),
                "parameters": sum(p.numel() for p in params.values()),
                "trainable": sum(p.numel() for p in params.values() if p.requires_grad),
            }
            for group, params in self.parameter_groups().items()
        }

    def _group_tensors(self, group: str) -> dict[str, Tensor]:
        if group == "lora":
            return {f"lora.{n}": p for n, p in self.llm.named_parameters() if "lora_" in n}
        module = self._group_modules()[group]
        return {f"{group}.{n}": t for n, t in module.state_dict(keep_vars=True).items()}

    def bridge_state_dict(self, groups: Iterable[str] | None = None) -> dict[str, Tensor]:
        """Detached copies of the parameters and buffers of ``groups`` (default: all seven)."""
        out: dict[str, Tensor] = {}
        for group in self._check_groups(groups):
            out.update({n: t.detach().clone() for n, t in self._group_tensors(group).items()})
        return out

    @torch.no_grad()
    def load_bridge_state_dict(
        self, state: dict[str, Tensor], groups: Iterable[str] | None = None, strict: bool = True
    ) -> list[str]:
        """Copy the tensors of ``groups`` from ``state`` (entries of other groups are ignored).

        With ``strict`` a tensor of a selected group missing from ``state``, or an entry of a
        selected group the model lacks, raises; a shape mismatch always raises a ``ValueError``
        naming the tensor and both shapes. Returns the loaded names.
        """
        groups = self._check_groups(groups)
        expected: dict[str, Tensor] = {}
        for group in groups:
            expected.update(self._group_tensors(group))
        selected = {n: t for n, t in state.items() if n.split(".", 1)[0] in groups}
        if strict:
            missing = sorted(set(expected) - set(selected))
            unexpected = sorted(set(selected) - set(expected))
            if missing or unexpected:
                raise ValueError(
                    f"load_bridge_state_dict(groups={groups}): missing {missing[:8]}"
                    f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                    f"{' ...' if len(unexpected) > 8 else ''}"
                )
        for name, value in selected.items():
            if name in expected and tuple(value.shape) != tuple(expected[name].shape):
                raise ValueError(
                    f"load_bridge_state_dict: tensor {name} has shape {tuple(value.shape)} in the state, "
                    f"{tuple(expected[name].shape)} in the model"
                )
        loaded = []
        for name, value in selected.items():
            if name in expected:
                expected[name].copy_(shard_like(value, expected[name]))
                loaded.append(name)
        return loaded

    # -- persistence ---------------------------------------------------------------------------
    def _embedding_matrices(self) -> dict[str, Tensor]:
        """``input_embeddings`` and, for an LM head not tied to it, ``output_embeddings``."""
        weights = {"input_embeddings": self.llm.get_input_embeddings().weight}
        out = self.llm.get_output_embeddings()
        if out is not None and out.weight is not weights["input_embeddings"]:
            weights["output_embeddings"] = out.weight
        return weights

    def added_embedding_rows(self) -> dict[str, Tensor]:
        """The embedding rows beyond the base's :attr:`base_vocab_size` (the placeholder's and any
        other token added to the base): ``vocabulary.input_embeddings`` ``[n, d_l]`` and, for an
        untied LM head, ``vocabulary.output_embeddings``. Empty when nothing was added, and for
        sharded (FSDP) embeddings, which only a collective call could gather."""
        from graftkit.distributed import sharded_types

        base, weights = self.base_vocab_size, self._embedding_matrices()
        if any(isinstance(w, sharded_types()) for w in weights.values()):
            return {}
        return {
            f"{VOCABULARY_PREFIX}{name}": w[base:].detach().cpu().contiguous()
            for name, w in weights.items()
            if w.shape[0] > base
        }

    def save_pretrained(
        self, directory: str | Path, state: dict[str, Tensor] | None = None
    ) -> Path:
        """``graft_config.json`` + ``bridge.safetensors`` (+ peft adapter files, ``tokenizer/``).

        ``state``, a full :meth:`bridge_state_dict` (gathered from sharded parameters under
        FSDP), is written in place of the model's own tensors. The peft adapter holds the LoRA
        tensors only, so it loads alone into the unmodified base
        (``PeftModel.from_pretrained(base, directory)``); the embedding rows added to the base
        (:meth:`added_embedding_rows`) go to ``bridge.safetensors``, never the whole matrices.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        compressor_class = (
            f"{type(self.compressor).__module__}.{type(self.compressor).__qualname__}"
        )
        meta = {
            "format_version": 1,
            "graft": self.config.model_dump(mode="json"),
            "visual_token_id": self.visual_token_id,
            "num_visual_tokens": self.num_visual_tokens,
            "hidden_size": self.hidden_size,
            "xattn_layers": self.xattn_layers,
            "compressor_class": compressor_class,
            "lora": _is_peft(self.llm),
            "base_vocab_size": self.base_vocab_size,
        }
        if isinstance(getattr(self.compressor, "config", None), ZoneCompressorConfig):
            # the compressor's own options (z-encoding scale and period, ...) beyond GraftConfig's
            meta["compressor_config"] = self.compressor.config.model_dump(mode="json")
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        groups = [g for g in BRIDGE_GROUPS if g != "lora"]
        if state is None:
            state, lora = self.bridge_state_dict(groups), {}
        else:  # peft filters its adapter's tensors from a state dict keyed as the model's own
            lora = {
                "state_dict": {
                    n.removeprefix("lora."): t for n, t in state.items() if n.startswith("lora.")
                }
            }
        bridge = {
            n: t.detach().cpu().contiguous()
            for n, t in state.items()
            if n.split(".", 1)[0] in groups
        }
        bridge.update(self.added_embedding_rows())
        save_file(bridge, str(directory / BRIDGE_FILE), metadata={"format": "graftkit-bridge"})
        if _is_peft(self.llm):
            # peft's "auto" would save the whole embedding and LM-head matrices of a resized
            # vocabulary, which no unmodified base can load; the added rows are in the bridge
            self.llm.save_pretrained(str(directory), save_embedding_layers=False, **lora)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        base_model: nn.Module,
        tokenizer: Any | None = None,
        compressor: nn.Module | None = None,
    ) -> GraftedLM:
        """Rebuild a saved graft on ``base_model``.

        ``base_model`` must be the base LLM the graft was built on, freshly loaded and unmodified:
        the same weights (no merged LoRA, no other fine-tuning; nothing checks them) and no graft
        of its own (refused). Its vocabulary may be the original one or already hold the added
        tokens (as :func:`graftkit.lm.load_llm` leaves it); the saved added rows replace whatever
        it holds there. The tokenizer saved with the graft is used when ``tokenizer`` is None. A
        compressor other than :class:`ZoneCompressor` must be passed (built, e.g., from the
        plugin registry); the saved compressor settings then yield to the ones it declares.
        Folders written before the added rows were saved separately (their adapter holds the
        whole embedding matrices) load as well.
        """
        directory = Path(directory)
        path = directory / CONFIG_FILE
        if not path.exists():
            raise FileNotFoundError(f"GraftedLM.from_pretrained: no {CONFIG_FILE} in {directory}")
        check_folder(directory)  # a damaged file: CheckpointError naming it and what is wrong
        meta = json.loads(path.read_text())
        if compressor is None and meta["compressor_class"] != _DEFAULT_COMPRESSOR:
            raise ValueError(
                f"GraftedLM.from_pretrained: {directory} was saved with compressor {meta['compressor_class']}; "
                "pass compressor= built the same way"
            )
        if compressor is None and "compressor_config" in meta:
            compressor = ZoneCompressor.from_config(
                ZoneCompressorConfig.model_validate(meta["compressor_config"])
            )
        # the compressor the tensors were saved from is the truth about its settings (folders of
        # older versions may record other values beside it in "graft")
        declared = _compressor_settings(compressor) if compressor is not None else {}
        if "dropout" in declared:
            declared["compressor_dropout"] = declared["dropout"]  # the field's former name
        config = GraftConfig.model_validate(
            {k: v for k, v in meta["graft"].items() if k not in declared}
        )
        k = int(declared.get("num_zones", config.num_zones))
        if k != meta["num_visual_tokens"]:
            raise ValueError(
                f"GraftedLM.from_pretrained: {directory} holds a graft of K={meta['num_visual_tokens']} "
                f"visual tokens, the compressor passed makes {k}"
            )
        if tokenizer is None and (directory / TOKENIZER_DIR).exists():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(directory / TOKENIZER_DIR))
        model = cls(
            base_model,
            config,
            tokenizer,
            compressor,
            visual_token_id=meta["visual_token_id"],
            lora_dir=directory if meta["lora"] else None,
        )
        state = load_file(str(directory / BRIDGE_FILE))
        model.load_bridge_state_dict(state, groups=[g for g in BRIDGE_GROUPS if g != "lora"])
        model._load_added_rows(state, meta.get("base_vocab_size"), directory)
        return model

    @torch.no_grad()
    def _load_added_rows(
        self, state: dict[str, Tensor], base_vocab_size: int | None, directory: Path
    ) -> None:
        """Copy the saved :meth:`added_embedding_rows` into this model's embedding matrices."""
        rows = {n: t for n, t in state.items() if n.startswith(VOCABULARY_PREFIX)}
        if not rows:
            return  # nothing was added, or a folder whose adapter holds the whole matrices
        weights = self._embedding_matrices()
        for name, value in rows.items():
            weight = weights.get(name.removeprefix(VOCABULARY_PREFIX))
            if weight is None:
                raise ValueError(
                    f"GraftedLM.from_pretrained: {directory} holds {name}, but the base model's "
                    "LM head is tied to its input embeddings (a different base model?)"
                )
            target = weight[base_vocab_size:]
            if base_vocab_size is None or tuple(target.shape) != tuple(value.shape):
                raise ValueError(
                    f"GraftedLM.from_pretrained: {directory} holds {tuple(value.shape)} added "
                    f"rows {name} after row {base_vocab_size}; the base model has "
                    f"{weight.shape[0]} rows of width {weight.shape[1]} (a different base model?)"
                )
            target.copy_(value.to(device=weight.device, dtype=weight.dtype))
        self.base_vocab_size = base_vocab_size


def graft(
    model: nn.Module,
    config: GraftConfig,
    tokenizer: Any | None = None,
    compressor: nn.Module | None = None,
) -> GraftedLM:
    """Graft the bridge into ``model`` (any ``AutoModelForCausalLM`` decoder); see :class:`GraftedLM`."""
    return GraftedLM(model, config, tokenizer, compressor)
