"""The bridge used as a library, as docs/bridge.md shows it: a vocabulary with no free row, the
adapter saved small and base-compatible, one source for the compressor settings, errors that
name GraftConfig's fields, the state right after ``graft`` and an unmodified base."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_decoders import make_tokenizer, small_graft_config
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from graftkit.bridge import GraftConfig, GraftedLM, LoraSettings, ZoneCompressor, graft

HIDDEN = 32


def _tensors(path) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in load_file(str(path)).items()}


@pytest.fixture
def full_base(tmp_path):
    """A local model folder (as ``AutoModelForCausalLM.from_pretrained`` reads a downloaded LLM)
    whose vocabulary has no free row: 60 embedding rows for the tokenizer's 60 tokens."""
    vocab = len(make_tokenizer())
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=HIDDEN,
            intermediate_size=2 * HIDDEN,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
            tie_word_embeddings=False,
        )
    )
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # fewer near-ties in greedy generation
    model.save_pretrained(tmp_path / "base")
    return lambda: AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()


def _documented_graft(base, tokenizer):
    """docs/bridge.md's example at tiny sizes, every bridge and LoRA tensor made non-trivial."""
    cfg = GraftConfig(
        visual_dim=16,
        num_zones=4,
        num_heads=2,
        xattn_heads=4,
        num_classes=3,
        jepa_dim=8,
        lora=LoraSettings(r=2, alpha=4, dropout=0.0),
    )
    g = graft(base, cfg, tokenizer)
    torch.manual_seed(1)
    with torch.no_grad():
        for params in g.parameter_groups().values():
            for p in params.values():
                p.add_(0.05 * torch.randn_like(p))
    return g.eval()


def _use(g, slices):
    """The example's forward and greedy generation on one prompt."""
    prompt = g.expand_prompt("<image>\nw1 w2")
    batch = g.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        _, tokens = g.encode(slices)
        out = g(**batch, visual_tokens=tokens, labels=batch.input_ids)
    ids = g.generate(tokens, **batch, do_sample=False, max_new_tokens=6)
    return out.logits, out.loss, ids


def test_the_documented_example_with_a_vocabulary_that_has_to_grow(full_base, tmp_path):
    from peft import PeftModel

    tokenizer = make_tokenizer()
    g = _documented_graft(full_base(), tokenizer)
    # no free row: the placeholder is row 60 of 61, appended to both matrices
    assert g.visual_token_id == 60
    assert g.llm.get_input_embeddings().weight.shape == (61, HIDDEN)
    slices = torch.randn(1, 9, 16, generator=torch.Generator().manual_seed(2))
    logits, loss, ids = _use(g, slices)
    assert logits.shape[-1] == 61 and torch.isfinite(loss)

    g.save_pretrained(tmp_path / "graft")
    # the adapter holds LoRA's A and B matrices and nothing else: no embedding, no LM head
    adapter = _tensors(tmp_path / "graft" / "adapter_model.safetensors")
    assert adapter and all("lora_A" in n or "lora_B" in n for n in adapter)
    lora_params = g.inventory()["lora"]["parameters"]
    assert sum(torch.Size(shape).numel() for shape in adapter.values()) == lora_params
    # the bridge file holds the one added row of each matrix, never a whole [61, d] matrix
    bridge = _tensors(tmp_path / "graft" / "bridge.safetensors")
    assert bridge["vocabulary.input_embeddings"] == (1, HIDDEN)
    assert bridge["vocabulary.output_embeddings"] == (1, HIDDEN)
    assert not [n for n, shape in bridge.items() if 61 in shape or 60 in shape]
    meta = json.loads((tmp_path / "graft" / "graft_config.json").read_text())
    assert (meta["base_vocab_size"], meta["visual_token_id"]) == (60, 60) == (g.base_vocab_size, 60)

    # the adapter alone loads into the unmodified base and is the graft's LLM on plain text
    alone = PeftModel.from_pretrained(full_base(), str(tmp_path / "graft")).eval()
    text = tokenizer(["w1 w2 w3 w4"], return_tensors="pt")
    with torch.no_grad():
        want = g(**text).logits
        torch.testing.assert_close(alone(**text).logits, want[..., :60])
    # LoRA matters here: the unadapted base gives other logits
    with torch.no_grad():
        assert not torch.allclose(full_base()(**text).logits, want[..., :60])

    # the graft reloads on another fresh copy of the base: the same logits, loss and tokens
    loaded = GraftedLM.from_pretrained(tmp_path / "graft", full_base()).eval()
    assert loaded.visual_token_id == 60 and loaded.config == g.config
    got_logits, got_loss, got_ids = _use(loaded, slices)
    assert torch.equal(got_logits, logits) and torch.equal(got_loss, loss)
    assert torch.equal(got_ids, ids)


def test_saved_rows_replace_the_rows_a_loader_added(full_base, tmp_path):
    """graftkit.lm.load_llm adds the placeholder before the graft, with random rows
    (transformers' mean_resizing): the graft still saves only those rows, and a reload puts the
    saved ones back whatever the fresh base drew."""
    tokenizer = make_tokenizer()
    tokenizer.add_special_tokens({"extra_special_tokens": ["<|visual_region|>"]})

    def loaded_base(seed):
        model = full_base()
        torch.manual_seed(seed)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        return model

    g = _documented_graft(loaded_base(5), tokenizer)
    assert g.base_vocab_size == 60  # from the folder's config.json, not the resized matrix
    g.save_pretrained(tmp_path / "graft")
    adapter = _tensors(tmp_path / "graft" / "adapter_model.safetensors")
    assert all("lora_" in n for n in adapter)
    saved = _tensors(tmp_path / "graft" / "bridge.safetensors")
    assert saved["vocabulary.output_embeddings"] == (1, HIDDEN)
    slices = torch.randn(1, 9, 16, generator=torch.Generator().manual_seed(2))
    loaded = GraftedLM.from_pretrained(tmp_path / "graft", loaded_base(6)).eval()
    for name in ("get_input_embeddings", "get_output_embeddings"):
        assert torch.equal(getattr(loaded.llm, name)().weight, getattr(g.llm, name)().weight)
    assert torch.equal(_use(loaded, slices)[0], _use(g, slices)[0])


def test_folders_written_before_the_rows_were_saved_apart_still_load(full_base, tmp_path):
    """Run folders of earlier versions: peft saved the whole resized embedding matrices in the
    adapter, the bridge file held no added rows, and graft_config.json could record GraftConfig
    compressor settings that the compressor passed to graft had overridden."""
    from safetensors.torch import save_file

    g = _documented_graft(full_base(), make_tokenizer())
    old = tmp_path / "old"
    g.save_pretrained(old)
    g.llm.save_pretrained(str(old), save_embedding_layers=True)  # what peft's "auto" did
    assert any("embed_tokens" in n for n in _tensors(old / "adapter_model.safetensors"))
    bridge = {n: t for n, t in load_file(old / "bridge.safetensors").items()}
    save_file({n: t for n, t in bridge.items() if not n.startswith("vocabulary.")}, old / "b")
    (old / "b").replace(old / "bridge.safetensors")
    meta = json.loads((old / "graft_config.json").read_text())
    del meta["base_vocab_size"]
    meta["graft"]["num_zones"] = 32  # the overridden setting; the compressor made 4
    (old / "graft_config.json").write_text(json.dumps(meta))

    slices = torch.randn(1, 9, 16, generator=torch.Generator().manual_seed(2))
    loaded = GraftedLM.from_pretrained(old, full_base()).eval()
    assert loaded.num_visual_tokens == 4 and loaded.config.num_zones == 4
    assert torch.equal(_use(loaded, slices)[0], _use(g, slices)[0])


# -- one source of truth for the compressor settings ----------------------------------------
def test_a_compressor_passed_to_graft_is_the_source_of_its_settings(tmp_path):
    compressor = ZoneCompressor(16, num_zones=4, num_heads=2, position_scale=0.1)
    g = graft(_tiny_llm(), GraftConfig(visual_dim=16, lora=None), compressor=compressor)
    # nothing set in the GraftConfig: every compressor setting is the module's
    assert (g.config.num_zones, g.config.num_heads, g.config.position_scale) == (4, 2, 0.1)
    assert g.num_visual_tokens == 4
    g.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "graft_config.json").read_text())
    assert meta["graft"]["num_zones"] == meta["num_visual_tokens"] == 4
    for key, value in meta["compressor_config"].items():
        assert meta["graft"].get(key, value) == value


def test_a_compressor_setting_given_twice_with_two_values_is_refused():
    compressor = ZoneCompressor(16, num_zones=4, num_heads=2)
    config = GraftConfig(visual_dim=16, num_zones=32, num_heads=2, lora=None)
    with pytest.raises(
        ValueError, match=r"GraftConfig\.num_zones=32 but the compressor has num_zones=4"
    ):
        graft(_tiny_llm(), config, compressor=compressor)
    # the same value twice is one setting
    g = graft(_tiny_llm(), config.model_copy(update={"num_zones": 4}), compressor=compressor)
    assert g.num_visual_tokens == 4


class _PoolCompressor(nn.Module):
    """A compressor that is not a ZoneCompressor: only its ``num_zones`` is known to graft."""

    def __init__(self, num_zones: int):
        super().__init__()
        self.num_zones = num_zones
        self.proj = nn.Linear(16, 16)

    def forward(self, slices, z_mm=None, mask=None):
        return self.proj(slices[:, : self.num_zones])


def test_another_compressor_declares_its_number_of_zones():
    g = graft(_tiny_llm(), GraftConfig(visual_dim=16, lora=None), compressor=_PoolCompressor(3))
    assert g.num_visual_tokens == 3 and g.config.num_zones == 3
    with pytest.raises(
        ValueError, match=r"GraftConfig\.num_zones=5 but the compressor has num_zones=3"
    ):
        graft(_tiny_llm(), GraftConfig(visual_dim=16, num_zones=5), compressor=_PoolCompressor(3))


def test_the_run_passes_one_config_and_its_compressor_unchanged():
    """A run builds the GraftConfig and the compressor from the same ``bridge`` section: they
    agree, and graft keeps that very config object."""
    from graftkit.compressors import zone_compressor
    from graftkit.config import build_config
    from graftkit.curriculum.model import graft_config

    cfg = build_config("ct_rate", overrides={"bridge.num_zones": 4, "bridge.num_heads": 2})
    config = graft_config(cfg, visual_dim=16, num_classes=3, jepa_dim=8)
    g = graft(_tiny_llm(), config, compressor=zone_compressor(16, cfg.bridge))
    assert g.config is config


# -- GraftConfig's defaults on small widths ---------------------------------------------------
def _tiny_llm(hidden: int = HIDDEN, heads: int = 4):
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=heads,
            num_key_value_heads=2,
            head_dim=hidden // heads,
        )
    )


def test_widths_the_defaults_do_not_divide_name_the_graft_config_field():
    """The defaults are the paper's (16 compressor heads for d_v = 1024, 8 adapter heads for
    d_l = 3072); a width they do not divide fails before the model or tokenizer is touched."""
    tokenizer, model = make_tokenizer(), _tiny_llm()
    vocab = len(tokenizer)
    with pytest.raises(ValueError, match=r"GraftConfig\.num_heads=16 .* visual_dim=24"):
        graft(model, GraftConfig(visual_dim=24), tokenizer)
    with pytest.raises(ValueError, match=r"GraftConfig\.visual_dim=15 must be even"):
        graft(model, GraftConfig(visual_dim=15, num_heads=5), tokenizer)
    with pytest.raises(ValueError, match=r"GraftConfig\.xattn_heads=8 .* hidden size 36"):
        graft(_tiny_llm(hidden=36, heads=2), GraftConfig(visual_dim=16), tokenizer)
    assert len(tokenizer) == vocab and "<|visual_region|>" not in tokenizer.get_vocab()
    assert not model.get_input_embeddings()._forward_hooks
    # a compressor passed in has its own heads: GraftConfig's num_heads is not checked then
    compressor = ZoneCompressor(24, num_zones=4, num_heads=4)
    assert graft(model, GraftConfig(visual_dim=24), tokenizer, compressor).num_visual_tokens == 4


# -- the state right after graft, and an unmodified base --------------------------------------
def test_right_after_graft_every_bridge_group_and_lora_train_and_the_base_does_not():
    g = graft(_tiny_llm(), small_graft_config())
    inventory = g.inventory()
    assert all(v["trainable"] == v["parameters"] > 0 for v in inventory.values()), inventory
    bridge = {id(p) for params in g.parameter_groups().values() for p in params.values()}
    base = [n for n, p in g.named_parameters() if id(p) not in bridge]
    assert base and not [
        n for n, p in g.named_parameters() if id(p) not in bridge and p.requires_grad
    ]
    g.set_trainable(["xattn"])
    assert [k for k, v in g.inventory().items() if v["trainable"]] == ["xattn"]


def test_a_model_that_already_carries_a_graft_is_refused(tmp_path):
    model = _tiny_llm()
    g = graft(model, small_graft_config(lora=None))
    with pytest.raises(ValueError, match="already carries a graft"):
        graft(model, small_graft_config(lora=None))
    g.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="freshly loaded, unmodified base model"):
        GraftedLM.from_pretrained(tmp_path, model)
