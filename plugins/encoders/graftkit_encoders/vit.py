"""The ViT of ``lejepa-ct`` on transformers' ``Dinov2Model``, and timm ↔ HF checkpoint key mapping.

timm's ``vit_large_patch14_dinov2`` (``in_chans=1``, ``num_classes=0``, ``dynamic_img_size=True``)
is rebuilt as an HF ``Dinov2Model`` of the same geometry: timm cannot be installed next to this
torch build (it needs torchvision). Two things differ between the libraries and are handled here:
the parameter names (``blocks.{i}.attn.qkv`` is one fused matrix in timm, three in HF) and the
resampling of the 37 × 37 position grid for other slice sizes (timm antialiases, HF does not).
``tests/encoders/test_vit.py`` checks both against a plain re-implementation of timm's forward.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Dinov2Config, Dinov2Model
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

from graftkit_encoders.lejepa import LeJepaCTConfig


def dinov2_config(config: LeJepaCTConfig) -> Dinov2Config:
    """The HF config of timm's ``vit_large_patch14_dinov2`` geometry with one input channel."""
    return Dinov2Config(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        mlp_ratio=config.mlp_ratio,
        patch_size=config.patch_size,
        image_size=config.pretrain_image_size,
        num_channels=1,
        layerscale_value=config.layerscale_value,
        layer_norm_eps=config.layer_norm_eps,
        hidden_act="gelu",
        qkv_bias=True,
        use_mask_token=False,
        use_swiglu_ffn=False,
        attn_implementation="sdpa",
    )


class TimmDinov2Embeddings(Dinov2Embeddings):
    """HF Dinov2 embeddings whose position grid is resampled as timm's ``resample_abs_pos_embed``
    does for ``dynamic_img_size=True``: bicubic to the exact patch grid, with antialiasing (HF
    resamples without it, which changes every token when the slice is smaller than 518)."""

    def interpolate_pos_encoding(
        self, embeddings: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        num_positions = self.position_embeddings.shape[1] - 1
        grid = round(num_positions**0.5)
        new_h, new_w = height // self.patch_size, width // self.patch_size
        if new_h == grid and new_w == grid:
            return self.position_embeddings
        cls_pos, patch_pos = self.position_embeddings[:, :1], self.position_embeddings[:, 1:]
        dim = patch_pos.shape[-1]
        patch_pos = patch_pos.reshape(1, grid, grid, dim).permute(0, 3, 1, 2).float()
        patch_pos = F.interpolate(
            patch_pos, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
        )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, new_h * new_w, dim).to(cls_pos.dtype)
        return torch.cat([cls_pos, patch_pos], dim=1)


def build_vit(config: LeJepaCTConfig) -> Dinov2Model:
    """A randomly initialised ViT of ``config`` (seeded by ``config.seed``), in eval mode."""
    hf_config = dinov2_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = Dinov2Model(hf_config)
    embeddings = TimmDinov2Embeddings(hf_config)
    embeddings.load_state_dict(model.embeddings.state_dict())
    model.embeddings = embeddings
    return model.eval()


_PREFIXES = ("module.", "model.", "backbone.", "dinov2.", "encoder.backbone.")
_MASK_TOKENS = ("mask_token", "embeddings.mask_token")
_BACKBONE_ROOTS = ("cls_token", "pos_embed", "reg_token", "patch_embed.", "blocks.", "norm.")
_HF_BACKBONE_ROOTS = ("embeddings.", "encoder.layer.", "layernorm.")
_ANCHORS = ("cls_token", "embeddings.cls_token")
_TIMM_BLOCK = {
    "norm1": "norm1",
    "attn.proj": "attention.o_proj",
    "ls1.gamma": "layer_scale1.lambda1",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "ls2.gamma": "layer_scale2.lambda1",
}
_LEGACY_HF = {
    ".attention.attention.query.": ".attention.q_proj.",
    ".attention.attention.key.": ".attention.k_proj.",
    ".attention.attention.value.": ".attention.v_proj.",
    ".attention.output.dense.": ".attention.o_proj.",
}


def _is_backbone_key(key: str) -> bool:
    return key.startswith(_BACKBONE_ROOTS + _HF_BACKBONE_ROOTS) and key not in _MASK_TOKENS


def split_backbone(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The ViT backbone of a checkpoint (wrapper prefixes stripped) and the names of every other
    tensor in it (projection heads, predictors, supervised heads, classifiers), which
    :func:`load_weights` ignores and lists.

    A prefix (``module.``, ``model.``, ``backbone.``, ``dinov2.``, ``encoder.backbone.``) is
    stripped when every key has it, or when the keys under it hold a backbone (a CLS token) and
    the others are then outside it. Backbone keys are timm's (``cls_token``, ``pos_embed``,
    ``reg_token``, ``patch_embed.*``, ``blocks.*``, ``norm.*``) and HF Dinov2's (``embeddings.*``,
    ``encoder.layer.*``, ``layernorm.*``); the mask token (unused at inference) is dropped.
    """
    names = {key: key for key in state}  # current key -> key in the checkpoint
    current = dict(state)
    ignored: list[str] = []
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            inside = {k[len(prefix) :]: k for k in current if k.startswith(prefix)}
            if not inside or not (
                len(inside) == len(current) or any(a in inside for a in _ANCHORS)
            ):
                continue
            ignored += [names[k] for k in current if not k.startswith(prefix)]
            names = {new: names[old] for new, old in inside.items()}
            current = {new: current[old] for new, old in inside.items()}
            changed = True
    backbone = {}
    for key, value in current.items():
        if _is_backbone_key(key):
            backbone[key] = value
        elif key not in _MASK_TOKENS:
            ignored.append(names[key])
    return backbone, sorted(ignored)


def timm_to_hf_state_dict(
    state: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Map a timm ``vit_*_dinov2`` backbone state dict (or an HF Dinov2 one, current or legacy
    key names) onto :func:`build_vit`'s keys; ``qkv`` is split into ``q_proj``/``k_proj``/``v_proj``.

    The mask token is dropped (masking is unused at inference). Keys this mapping does not know,
    and register tokens, raise ``ValueError`` naming ``source`` and the key: take the backbone out
    of a larger checkpoint with :func:`split_backbone` first.
    """
    state = {k: v for k, v in state.items() if k not in _MASK_TOKENS}
    if any(k.startswith("reg_token") for k in state):
        raise ValueError(
            f"{source}: has register tokens (reg_token); only the plain dinov2 ViT is supported"
        )
    if not any(k.startswith("blocks.") for k in state):
        out = {}
        for key, value in state.items():
            for old, new in _LEGACY_HF.items():
                key = key.replace(old, new)
            out[key] = value
        return out

    out: dict[str, torch.Tensor] = {}
    block = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias|gamma)$")
    for key, value in state.items():
        if key == "cls_token":
            out["embeddings.cls_token"] = value
        elif key == "pos_embed":
            out["embeddings.position_embeddings"] = value
        elif key.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings.projection." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("norm."):
            out["layernorm." + key.rsplit(".", 1)[1]] = value
        elif match := block.match(key):
            index, module, kind = match.groups()
            prefix = f"encoder.layer.{index}."
            if module == "attn.qkv":
                q, k, v = value.chunk(3, dim=0)
                for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                    out[f"{prefix}attention.{name}.{kind}"] = part.contiguous()
            elif f"{module}.{kind}" in _TIMM_BLOCK:
                out[prefix + _TIMM_BLOCK[f"{module}.{kind}"]] = value
            elif module in _TIMM_BLOCK:
                out[f"{prefix}{_TIMM_BLOCK[module]}.{kind}"] = value
            else:
                raise ValueError(f"{source}: unknown timm key {key!r}")
        else:
            raise ValueError(f"{source}: unknown timm key {key!r}")
    return out


def hf_to_timm_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`timm_to_hf_state_dict` (exports a :func:`build_vit` model in timm's layout)."""
    inverse_block = {v: k for k, v in _TIMM_BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    layer = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
    for key, value in state.items():
        if key == "embeddings.cls_token":
            out["cls_token"] = value
        elif key == "embeddings.position_embeddings":
            out["pos_embed"] = value
        elif key.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("layernorm."):
            out["norm." + key.rsplit(".", 1)[1]] = value
        elif match := layer.match(key):
            index, rest = match.groups()
            if rest.startswith("attention.") and rest.split(".")[1] in (
                "q_proj",
                "k_proj",
                "v_proj",
            ):
                kind = rest.rsplit(".", 1)[1]
                if rest.startswith("attention.q_proj"):
                    parts = [
                        state[f"encoder.layer.{index}.attention.{n}.{kind}"]
                        for n in ("q_proj", "k_proj", "v_proj")
                    ]
                    out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
            elif rest in inverse_block:
                out[f"blocks.{index}.{inverse_block[rest]}"] = value
            else:
                module, kind = rest.rsplit(".", 1)
                out[f"blocks.{index}.{inverse_block[module]}.{kind}"] = value
        else:
            raise ValueError(f"no timm key for {key!r}")
    return out


def _listing(names: list[str], first: int = 6) -> str:
    return ", ".join(names[:first]) + (", ..." if len(names) > first else "")


def load_weights(model: Dinov2Model, path: str | Path) -> None:
    """Load a safetensors (or torch) checkpoint in timm or HF layout into ``model``.

    Lenient where the authors are (DALE-CT ``load_hf/lejepa_1s.py`` loads its own checkpoint with
    ``strict=False``): tensors outside the ViT backbone (:func:`split_backbone`: projection heads,
    predictors, supervised heads) are ignored and listed in one warning (count and first names).
    Strict about the backbone: every backbone tensor of the config must be in the file with its
    shape, and the file must hold no backbone tensor the config lacks (a deeper or wider model);
    otherwise one ``ValueError`` line names the file, the tensors and the config field to check.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "teacher", "student"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
                break
    backbone, ignored = split_backbone(state)
    mapped = timm_to_hf_state_dict(backbone, source=path.name)
    own = model.state_dict()
    missing = [k for k in own if k not in mapped]
    unexpected = sorted(k for k in mapped if k not in own)
    misshaped = [
        f"{k} has shape {tuple(mapped[k].shape)}, config expects {tuple(own[k].shape)}"
        for k in own
        if k in mapped and tuple(mapped[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} backbone tensor(s): {_listing(missing)}")
    if unexpected:
        problems.append(
            f"{len(unexpected)} backbone tensor(s) the config lacks: {_listing(unexpected)}"
        )
    if misshaped:
        problems.append(f"{len(misshaped)} of another shape: {_listing(misshaped, 3)}")
    if problems:
        bad = missing + unexpected + [m.split(" ", 1)[0] for m in misshaped]
        hints = ["num_hidden_layers / hidden_size / patch_size"]
        if any("position_embeddings" in k for k in bad):
            hints.append("pretrain_image_size (the checkpoint's image size)")
        raise ValueError(
            f"{path.name}: checkpoint does not match the lejepa-ct config: "
            + "; ".join(problems)
            + f" (check {', '.join(hints)})"
        )
    if ignored:
        warnings.warn(
            f"{path.name}: ignored {len(ignored)} tensor(s) outside the ViT backbone: "
            f"{_listing(ignored)}",
            stacklevel=2,
        )
    model.load_state_dict(mapped, strict=True)
