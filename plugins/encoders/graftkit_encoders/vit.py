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
_DROPPED = ("head.", "classifier.", "mask_token", "embeddings.mask_token")
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


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = dict(state)
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def timm_to_hf_state_dict(
    state: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Map a timm ``vit_*_dinov2`` state dict (or an HF Dinov2 one, current or legacy key names)
    onto :func:`build_vit`'s keys; ``qkv`` is split into ``q_proj``/``k_proj``/``v_proj``.

    Classifier heads and the mask token are dropped (``num_classes=0``; masking is unused at
    inference). Keys this mapping does not know raise ``ValueError`` naming ``source`` and the key.
    """
    state = {k: v for k, v in state.items() if not k.startswith(_DROPPED)}
    state = _strip_prefixes(state)
    state = {k: v for k, v in state.items() if not k.startswith(_DROPPED)}
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
            raise ValueError(
                f"{source}: unknown timm key {key!r} (fc_norm/attn_pool heads are not the CLS encoder)"
            )
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


def load_weights(model: Dinov2Model, path: str | Path) -> None:
    """Load a safetensors (or torch) checkpoint in timm or HF layout into ``model``, strictly.

    A checkpoint whose shapes disagree with the config (width, depth, position grid, channels)
    raises ``ValueError`` naming the file, the tensor and both shapes.
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
    mapped = timm_to_hf_state_dict(state, source=path.name)
    own = model.state_dict()
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{path.name}: checkpoint does not match the lejepa-ct config: "
            f"missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
            f"unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''} "
            "(check num_hidden_layers / hidden_size)"
        )
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(own[key].shape):
            hint = (
                " (set pretrain_image_size to the checkpoint's image size)"
                if "position" in key
                else ""
            )
            raise ValueError(
                f"{path.name}: {key} has shape {tuple(value.shape)}, config expects {tuple(own[key].shape)}{hint}"
            )
    model.load_state_dict(mapped, strict=True)
