"""The HF Dinov2 ViT of ``lejepa-ct`` against timm's ``vit_large_patch14_dinov2`` semantics.

timm is not installable here, so :func:`timm_forward` re-implements timm's ViT forward
(``dynamic_img_size=True``, ``num_classes=0``, CLS pooling) from a timm-layout state dict, line
by line from timm's ``PatchEmbed``/``_pos_embed``/``Block``/``Attention``/``LayerScale``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from graftkit_encoders.lejepa import LeJepaCTConfig
from graftkit_encoders.vit import (
    build_vit,
    hf_to_timm_state_dict,
    load_weights,
    split_backbone,
    timm_to_hf_state_dict,
)
from safetensors.torch import save_file

from .conftest import TINY


def timm_forward(
    sd: dict, x: torch.Tensor, heads: int, patch: int, eps: float = 1e-6
) -> torch.Tensor:
    """timm VisionTransformer.forward_features + CLS pool, in plain torch."""
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    b, d, h, w = t.shape
    t = t.flatten(2).transpose(1, 2)
    pos = sd["pos_embed"]
    grid = math.isqrt(pos.shape[1] - 1)
    grid_pos = pos[:, 1:].reshape(1, grid, grid, d).permute(0, 3, 1, 2)
    if (h, w) != (grid, grid):  # timm resample_abs_pos_embed: bicubic, antialias=True
        grid_pos = F.interpolate(
            grid_pos, size=(h, w), mode="bicubic", antialias=True, align_corners=False
        )
    grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(1, h * w, d)
    t = torch.cat([sd["cls_token"].expand(b, -1, -1), t], 1) + torch.cat([pos[:, :1], grid_pos], 1)
    n = t.shape[1]
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        p = f"blocks.{i}."
        y = F.layer_norm(t, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        att = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, n, d)
        t = t + sd[p + "ls1.gamma"] * F.linear(
            y, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"]
        )
        y = F.layer_norm(t, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
        y = F.linear(
            F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
            sd[p + "mlp.fc2.weight"],
            sd[p + "mlp.fc2.bias"],
        )
        t = t + sd[p + "ls2.gamma"] * y
        i += 1
    return F.layer_norm(t, (d,), sd["norm.weight"], sd["norm.bias"], eps)[:, 0]


def random_timm_state(
    d: int = 32, depth: int = 2, grid: int = 5, patch: int = 14, seed: int = 1
) -> dict:
    """A timm-layout state dict with random values everywhere (LayerScale and norms included)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return (torch.randn(*shape, generator=g) * scale).contiguous()

    sd = {
        "cls_token": r(1, 1, d),
        "pos_embed": r(1, grid * grid + 1, d),
        "patch_embed.proj.weight": r(d, 1, patch, patch, scale=0.05),
        "patch_embed.proj.bias": r(d),
        "norm.weight": 1 + r(d),
        "norm.bias": r(d),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        sd |= {
            p + "norm1.weight": 1 + r(d), p + "norm1.bias": r(d),
            p + "attn.qkv.weight": r(3 * d, d), p + "attn.qkv.bias": r(3 * d),
            p + "attn.proj.weight": r(d, d), p + "attn.proj.bias": r(d),
            p + "ls1.gamma": 0.5 + r(d),
            p + "norm2.weight": 1 + r(d), p + "norm2.bias": r(d),
            p + "mlp.fc1.weight": r(4 * d, d), p + "mlp.fc1.bias": r(4 * d),
            p + "mlp.fc2.weight": r(d, 4 * d), p + "mlp.fc2.bias": r(d),
            p + "ls2.gamma": 0.5 + r(d),
        }  # fmt: skip
    return sd


@pytest.fixture(scope="module")
def tiny_config() -> LeJepaCTConfig:
    return LeJepaCTConfig(**TINY)


@pytest.mark.parametrize("size", [(70, 70), (42, 42), (42, 56)])
def test_timm_checkpoint_matches_timm_forward(tmp_path, tiny_config, size):
    """A timm-layout safetensors file loads into the HF ViT and gives timm's CLS, at the
    pre-training grid (5 × 5) and at smaller square and non-square grids (resampled)."""
    sd = random_timm_state()
    save_file({"module." + k: v for k, v in sd.items()}, str(tmp_path / "lejepa.safetensors"))
    model = build_vit(tiny_config)
    load_weights(model, tmp_path / "lejepa.safetensors")
    x = torch.rand(3, 1, *size, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ours = model(pixel_values=x).pooler_output
    ref = timm_forward(sd, x, heads=2, patch=14)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_resampling_is_timms_not_hfs(tiny_config):
    """HF's own Dinov2 resampling (no antialias) gives a different CLS at 42 × 42; ours gives timm's."""
    from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

    sd = random_timm_state()
    model = build_vit(tiny_config)
    model.load_state_dict(timm_to_hf_state_dict(sd))
    x = torch.rand(2, 1, 42, 42, generator=torch.Generator().manual_seed(3))
    emb = model.embeddings
    hf_pos = Dinov2Embeddings.interpolate_pos_encoding(emb, torch.zeros(1, 10, 32), 42, 42)
    timm_pos = emb.interpolate_pos_encoding(torch.zeros(1, 10, 32), 42, 42)
    assert hf_pos.shape == timm_pos.shape == (1, 1 + 9, 32)
    assert (hf_pos - timm_pos).abs().max() > 1e-3
    with torch.inference_mode():
        torch.testing.assert_close(
            model(pixel_values=x).pooler_output, timm_forward(sd, x, 2, 14), atol=2e-5, rtol=1e-4
        )


def test_inverse_mapping_round_trip(tiny_config):
    """HF → timm → HF is the identity on every tensor (qkv split/concatenation included)."""
    model = build_vit(tiny_config)
    state = model.state_dict()
    timm_state = hf_to_timm_state_dict(state)
    assert timm_state["blocks.1.attn.qkv.weight"].shape == (96, 32)
    assert "mask_token" not in timm_state and len(timm_state) == 6 + 2 * 14
    back = timm_to_hf_state_dict(timm_state)
    assert set(back) == set(state)
    for key in state:
        assert torch.equal(back[key], state[key]), key


def test_hf_layouts_load(tmp_path, tiny_config):
    """Checkpoints in HF layout load too: current names, and legacy names (attention.attention.query,
    attention.output.dense) with a ``dinov2.`` prefix, a mask token and a classifier head."""
    source = build_vit(tiny_config.model_copy(update={"seed": 5}))
    x = torch.rand(2, 1, 42, 56, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        expected = source(pixel_values=x).pooler_output
    legacy = {}
    for key, value in source.state_dict().items():
        key = key.replace(".attention.q_proj.", ".attention.attention.query.").replace(
            ".attention.k_proj.", ".attention.attention.key."
        )
        key = key.replace(".attention.v_proj.", ".attention.attention.value.").replace(
            ".attention.o_proj.", ".attention.output.dense."
        )
        legacy["dinov2." + key] = value.contiguous()
    legacy["dinov2.embeddings.mask_token"] = torch.zeros(1, 32)
    legacy["classifier.weight"] = torch.zeros(3, 64)
    save_file(legacy, str(tmp_path / "legacy.safetensors"))
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()},
        str(tmp_path / "hf.safetensors"),
    )
    for name in ("legacy.safetensors", "hf.safetensors"):
        model = build_vit(tiny_config)
        if name == "legacy.safetensors":
            with pytest.warns(UserWarning, match=r"ignored 1 tensor\(s\) .*: classifier\.weight$"):
                load_weights(model, tmp_path / name)
        else:
            load_weights(model, tmp_path / name)
        with torch.inference_mode():
            torch.testing.assert_close(model(pixel_values=x).pooler_output, expected)


def test_extra_tensors_are_ignored_and_listed_in_one_line(tmp_path, tiny_config):
    """A training checkpoint: the backbone under ``backbone.`` next to a projector, a predictor,
    a supervised head and a classifier (the authors load their checkpoints with strict=False).
    The backbone loads and gives timm's CLS; the five other tensors are named in one warning."""
    sd = random_timm_state()
    extra = {
        "projector.0.weight": torch.zeros(8, 32),
        "projector.2.bias": torch.zeros(8),
        "predictor.blocks.0.weight": torch.zeros(4, 4),
        "organ_head.fc.weight": torch.zeros(118, 32),
        "head.weight": torch.zeros(3, 32),
    }
    save_file(
        {"backbone." + k: v for k, v in sd.items()} | extra, str(tmp_path / "ckpt.safetensors")
    )
    model = build_vit(tiny_config)
    with pytest.warns(UserWarning) as caught:
        load_weights(model, tmp_path / "ckpt.safetensors")
    (message,) = [str(w.message) for w in caught]
    assert message == (
        "ckpt.safetensors: ignored 5 tensor(s) outside the ViT backbone: head.weight, "
        "organ_head.fc.weight, predictor.blocks.0.weight, projector.0.weight, projector.2.bias"
    )
    x = torch.rand(2, 1, 42, 42, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        torch.testing.assert_close(
            model(pixel_values=x).pooler_output, timm_forward(sd, x, 2, 14), atol=2e-5, rtol=1e-4
        )
    backbone, ignored = split_backbone(
        {"module." + k: v for k, v in sd.items()} | {"module.mask_token": torch.zeros(1, 32)}
    )
    assert set(backbone) == set(sd) and ignored == []


def test_missing_or_misshaped_backbone_tensors_are_named_in_one_line(tmp_path, tiny_config):
    sd = random_timm_state()
    del sd["blocks.1.mlp.fc2.bias"], sd["norm.weight"]
    save_file(sd, str(tmp_path / "cut.safetensors"))
    with pytest.raises(ValueError) as err:
        load_weights(build_vit(tiny_config), tmp_path / "cut.safetensors")
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(
        "cut.safetensors: checkpoint does not match the lejepa-ct config: missing 2 backbone "
        "tensor(s): encoder.layer.1.mlp.fc2.bias, layernorm.weight (check"
    )
    wide = random_timm_state()
    wide["blocks.0.mlp.fc1.weight"] = torch.zeros(64, 32)
    save_file(wide, str(tmp_path / "wide.safetensors"))
    with pytest.raises(
        ValueError,
        match=r"^wide\.safetensors: .*1 of another shape: encoder\.layer\.0\.mlp\.fc1\.weight "
        r"has shape \(64, 32\), config expects \(128, 32\)",
    ):
        load_weights(build_vit(tiny_config), tmp_path / "wide.safetensors")


def test_mismatched_checkpoint_names_file_and_tensor(tmp_path, tiny_config):
    """A deeper model is not truncated silently: its third block is 18 backbone tensors (timm's
    14, with qkv split into q, k, v weights and biases) the config lacks."""
    save_file(random_timm_state(depth=3), str(tmp_path / "deep.safetensors"))
    with pytest.raises(
        ValueError,
        match=r"deep\.safetensors: .*18 backbone tensor\(s\) the config lacks: encoder\.layer\.2\.",
    ):
        load_weights(build_vit(tiny_config), tmp_path / "deep.safetensors")
    save_file(random_timm_state(grid=4), str(tmp_path / "grid4.safetensors"))
    with pytest.raises(
        ValueError,
        match=r"grid4\.safetensors: .*embeddings\.position_embeddings has shape \(1, 17, 32\), "
        r"config expects \(1, 26, 32\).*pretrain_image_size",
    ):
        load_weights(build_vit(tiny_config), tmp_path / "grid4.safetensors")
    bad = random_timm_state() | {"fc_norm.weight": torch.ones(32)}
    with pytest.raises(ValueError, match=r"unknown timm key 'fc_norm\.weight'"):
        timm_to_hf_state_dict(bad, source="x.safetensors")
    assert split_backbone(bad)[1] == ["fc_norm.weight"]
    regs = random_timm_state() | {"reg_token": torch.zeros(1, 4, 32)}
    save_file(regs, str(tmp_path / "regs.safetensors"))
    with pytest.raises(ValueError, match=r"regs\.safetensors: has register tokens"):
        load_weights(build_vit(tiny_config), tmp_path / "regs.safetensors")


def test_full_size_geometry_is_vit_large_patch14_dinov2():
    """Default config = timm vit_large_patch14_dinov2 with in_chans=1, num_classes=0: a 37 × 37
    grid + CLS at 518 px, 24 blocks of width 1024, and timm's parameter count (304.37 M with
    three input channels, 2 × 1024 × 14 × 14 fewer with one)."""
    with torch.device("meta"):
        model = build_vit(LeJepaCTConfig(allow_random_weights=True))
    d, depth = 1024, 24
    assert model.embeddings.position_embeddings.shape == (1, 37 * 37 + 1, d)
    assert model.embeddings.patch_embeddings.projection.weight.shape == (d, 1, 14, 14)
    assert len(model.encoder.layer) == depth and model.embeddings.mask_token is None
    block = (
        2 * d
        + (3 * d * d + 3 * d)
        + (d * d + d)
        + d
        + 2 * d
        + (4 * d * d + 4 * d)
        + (4 * d * d + d)
        + d
    )
    expected = (d * 14 * 14 + d) + d + (37 * 37 + 1) * d + depth * block + 2 * d
    assert sum(p.numel() for p in model.parameters()) == expected
    three_channel = expected + 2 * d * 14 * 14
    assert round(three_channel / 1e6, 2) == 304.37
    cfg = model.config
    assert (cfg.layer_norm_eps, cfg.hidden_act, cfg.qkv_bias, cfg.use_swiglu_ffn) == (
        1e-6,
        "gelu",
        True,
        False,
    )
