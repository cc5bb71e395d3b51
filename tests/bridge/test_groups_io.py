"""Parameter groups, inventory, bridge state dicts, save/load, layer placement, LoRA merge."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_decoders import FAMILIES, make_model, make_tokenizer, small_graft_config

from graftkit.bridge import (
    BRIDGE_GROUPS,
    GraftConfig,
    GraftedLM,
    ZoneCompressor,
    expand_visual_placeholders,
    find_decoder_layers,
    graft,
    resolve_xattn_layers,
)


def _perturbed_graft(seed=0, **overrides):
    """A graft whose every bridge tensor (gates and LoRA B included) is non-trivial."""
    g = graft(make_model("llama"), small_graft_config(**overrides), make_tokenizer()).eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for params in g.parameter_groups().values():
            for p in params.values():
                p.add_(0.05 * torch.randn_like(p))
    return g


def _logits(g, seed=0):
    enc = g.tokenizer([g.expand_prompt("w1 <image> w2 w3")], return_tensors="pt")
    torch.manual_seed(seed)
    slices = torch.randn(1, 9, 16)
    with torch.no_grad():
        _, tokens = g.encode(slices)
        return g(**enc, visual_tokens=tokens).logits


def test_xattn_layers_follow_the_paper_by_depth_fraction():
    config = GraftConfig(visual_dim=8)
    assert resolve_xattn_layers(config, 28) == [7, 14, 21]
    assert resolve_xattn_layers(config, 4) == [1, 2, 3]
    assert resolve_xattn_layers(config, 16) == [4, 8, 12]
    assert resolve_xattn_layers(config, 2) == [
        1
    ]  # 0.5, 1.0, 1.5 round to 1, 1, 2 -> clamped, deduplicated
    assert resolve_xattn_layers(config.model_copy(update={"xattn_layers": [3, 0]}), 4) == [0, 3]
    with pytest.raises(ValueError, match=r"xattn_layers \[9\] out of range for a 4-layer decoder"):
        resolve_xattn_layers(config.model_copy(update={"xattn_layers": [1, 9]}), 4)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_adapters_hook_exactly_the_chosen_layers(family):
    g = graft(
        make_model(family, layers=6), small_graft_config(xattn_layers=[0, 4]), make_tokenizer()
    )
    layers = find_decoder_layers(g.llm)
    assert len(layers) == 6 and layers is find_decoder_layers(g.llm.get_base_model())
    seen = []
    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(
            lambda m, a, kw, i=i: seen.append(("layer", i)), with_kwargs=True
        )
    for i, adapter in g.xattn.items():
        adapter.register_forward_hook(lambda m, a, o, i=i: seen.append(("xattn", int(i))))
    enc = g.tokenizer(["w1 w2"], return_tensors="pt")
    with torch.no_grad():
        g(**enc, visual_tokens=torch.randn(1, 4, 32))
    order = [
        ("xattn", 0),
        ("layer", 0),
        ("layer", 1),
        ("layer", 2),
        ("layer", 3),
        ("xattn", 4),
        ("layer", 4),
        ("layer", 5),
    ]
    assert seen == order
    seen.clear()
    with torch.no_grad():
        g(**enc)  # no visual input: no adapter call
    assert [s for s in seen if s[0] == "xattn"] == []


def test_graft_without_tokenizer_adds_one_mean_initialised_row():
    base = make_model("llama")
    mean_in = base.get_input_embeddings().weight.detach().mean(dim=0)
    mean_out = base.get_output_embeddings().weight.detach().mean(dim=0)
    g = graft(base, small_graft_config(lora=None))
    assert g.visual_token_id == 64
    assert g.llm.get_input_embeddings().weight.shape[0] == 65
    torch.testing.assert_close(g.llm.get_input_embeddings().weight[64], mean_in)
    torch.testing.assert_close(g.llm.get_output_embeddings().weight[64], mean_out)


def test_tokenizer_gets_the_visual_token_once():
    tok = make_tokenizer()
    g = graft(make_model("llama"), small_graft_config(), tok)
    assert tok.convert_tokens_to_ids("<|visual_region|>") == g.visual_token_id == 60
    ids = tok(g.expand_prompt("w1 <image>")).input_ids
    assert ids == [5, 60, 60, 60, 60]
    again = graft(make_model("llama"), small_graft_config(), tok)
    assert again.visual_token_id == 60 and len(tok) == 61


def test_expand_visual_placeholders():
    t = "<|visual_region|>"
    assert expand_visual_placeholders("Findings: <image> now", 3) == f"Findings: {t * 3} now"
    assert expand_visual_placeholders("Findings:", 2) == f"{t * 2}Findings:"
    assert expand_visual_placeholders(f"a {t} b", 3) == f"a {t * 3} b"
    assert expand_visual_placeholders(f"a {t * 3} b", 3) == f"a {t * 3} b"
    with pytest.raises(ValueError, match="2 '<image>' markers"):
        expand_visual_placeholders("<image> <image>", 3)
    with pytest.raises(ValueError, match="holds 2"):
        expand_visual_placeholders(t * 2, 3)


def test_parameter_groups_and_inventory():
    g = graft(make_model("llama"), small_graft_config(), make_tokenizer())
    groups = g.parameter_groups()
    assert tuple(groups) == BRIDGE_GROUPS
    all_bridge = [id(p) for params in groups.values() for p in params.values()]
    assert len(all_bridge) == len(set(all_bridge))  # no parameter in two groups
    lora_ids = {id(p) for p in groups["lora"].values()}
    assert len(lora_ids) == 4 * 7 * 2  # 4 layers × 7 target modules × (A, B)
    assert len(groups["xattn"]) == 3 * 8 and all(n.startswith("xattn.") for n in groups["xattn"])
    llm_base = [p for n, p in g.llm.named_parameters() if id(p) not in lora_ids]
    g.set_trainable(["xattn", "projectors"])
    inv = g.inventory()
    for name, params in groups.items():
        assert inv[name]["tensors"] == len(params)
        assert inv[name]["parameters"] == sum(p.numel() for p in params.values())
        trainable = inv[name]["parameters"] if name in ("xattn", "projectors") else 0
        assert inv[name]["trainable"] == trainable, name
    assert not any(p.requires_grad for p in llm_base)
    g.set_trainable(BRIDGE_GROUPS)
    assert not any(p.requires_grad for p in llm_base)  # the LLM base is always frozen
    assert all(v["trainable"] == v["parameters"] for v in g.inventory().values())
    with pytest.raises(ValueError, match="unknown parameter group"):
        g.set_trainable(["decoder"])


def test_set_trainable_decides_which_groups_receive_gradients():
    g = _perturbed_graft()
    g.set_trainable(["predictor", "lora"])
    enc = g.tokenizer([g.expand_prompt("w1 w2")], return_tensors="pt")
    _, tokens = g.encode(torch.randn(1, 9, 16))
    g(**enc, visual_tokens=tokens, labels=enc.input_ids).loss.backward()
    for group, params in g.parameter_groups().items():
        got = {n for n, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0}
        if group in ("predictor", "lora"):
            assert got == set(params), group
        else:
            assert not got, group


def test_bridge_state_dict_round_trip_and_shape_errors():
    src, dst = _perturbed_graft(seed=1), _perturbed_graft(seed=2)
    state = src.bridge_state_dict()
    assert "calibrator.target_norm" in state  # buffers travel too
    loaded = dst.load_bridge_state_dict(
        state, groups=["projectors", "xattn", "lora"]
    )  # warm bridge
    assert set(loaded) == {n for n in state if n.split(".")[0] in ("projectors", "xattn", "lora")}
    for name, value in dst.bridge_state_dict(["projectors", "xattn", "lora"]).items():
        assert torch.equal(value, state[name])
    assert not torch.equal(
        dst.bridge_state_dict(["compressor"])["compressor.queries"], state["compressor.queries"]
    )
    dst.load_bridge_state_dict(state)
    torch.testing.assert_close(_logits(dst), _logits(src))
    bad = dict(state)
    bad["xattn.1.q_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(
        ValueError, match=r"xattn\.1\.q_proj\.weight has shape \(3, 3\) .* \(32, 32\)"
    ):
        dst.load_bridge_state_dict(bad, groups=["xattn"])
    missing = {n: t for n, t in state.items() if n != "heads.classifier.bias"}
    with pytest.raises(ValueError, match="missing"):
        dst.load_bridge_state_dict(missing)
    assert "heads.classifier.weight" in dst.load_bridge_state_dict(missing, strict=False)


def test_save_and_load_reproduce_logits_and_lora_loads_alone(tmp_path):
    from peft import PeftModel

    g = _perturbed_graft(seed=3)
    want = _logits(g)
    g.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "graft_config.json").read_text())
    assert meta["visual_token_id"] == 60 and meta["graft"]["num_zones"] == 4
    assert {"bridge.safetensors", "adapter_model.safetensors", "adapter_config.json"} <= {
        p.name for p in tmp_path.iterdir()
    }

    loaded = GraftedLM.from_pretrained(tmp_path, make_model("llama")).eval()
    assert loaded.visual_token_id == 60 and loaded.tokenizer is not None
    assert torch.equal(_logits(loaded), want)

    peft_alone = PeftModel.from_pretrained(make_model("llama"), str(tmp_path)).eval()
    enc = g.tokenizer(["w1 w2 w3"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(peft_alone(**enc).logits, g(**enc).logits)


def test_save_and_load_keep_the_compressor_options(tmp_path):
    compressor = ZoneCompressor(
        16, num_zones=4, num_heads=2, dropout=0.0, position_scale=0.1, max_period=64.0
    )
    g = graft(make_model("llama"), small_graft_config(lora=None), compressor=compressor).eval()
    assert g.config.position_scale == 0.1  # left unset in the GraftConfig: the compressor's
    g.save_pretrained(tmp_path)
    loaded = GraftedLM.from_pretrained(tmp_path, make_model("llama")).eval()
    assert loaded.compressor.config == compressor.config
    assert loaded.config == g.config
    slices, z = torch.randn(2, 30, 16), torch.arange(30.0).expand(2, 30) * 1.5
    with torch.no_grad():
        assert torch.equal(loaded.encode(slices, z)[1], g.encode(slices, z)[1])


def test_save_and_load_without_lora_or_tokenizer(tmp_path):
    g = graft(make_model("qwen2"), small_graft_config(lora=None))
    with torch.no_grad():
        for adapter in g.xattn.values():
            adapter.gate.fill_(0.4)
    g.save_pretrained(tmp_path)
    loaded = GraftedLM.from_pretrained(tmp_path, make_model("qwen2"))
    assert loaded.visual_token_id == 64
    ids = torch.tensor([[5, 64, 64, 64, 64, 7]])
    visual = torch.randn(1, 4, 32)
    with torch.no_grad():
        assert torch.equal(
            g.eval()(ids, visual_tokens=visual).logits,
            loaded.eval()(ids, visual_tokens=visual).logits,
        )


def test_merge_lora_keeps_outputs_and_adapters():
    g = _perturbed_graft(seed=4)
    want = _logits(g)
    g.merge_lora()
    assert g.inventory()["lora"]["tensors"] == 0
    torch.testing.assert_close(_logits(g), want, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_keeps_adapter_layers_in_the_forward_pass():
    g = _perturbed_graft(seed=5).train()
    enc = g.tokenizer([g.expand_prompt("w1 w2 w3")], return_tensors="pt")
    visual = torch.randn(1, 4, 32)

    def grads():
        g.zero_grad()
        g(**enc, visual_tokens=visual, labels=enc.input_ids).loss.backward()
        return {n: p.grad.clone() for n, p in g.parameter_groups()["xattn"].items()}

    g.set_trainable(["xattn", "lora"])
    plain = grads()
    g.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for name, grad in grads().items():
        torch.testing.assert_close(grad, plain[name])
    g.llm.activation_checkpointing_enable()  # every layer, straight on the LLM (reentrant)
    assert all(layer.gradient_checkpointing for layer in find_decoder_layers(g.llm))
    for name, grad in grads().items():
        torch.testing.assert_close(grad, plain[name])


def test_graft_refuses_a_peft_model_and_unknown_models():
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(make_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(TypeError, match="base model"):
        graft(wrapped, small_graft_config())
    with pytest.raises(TypeError, match="not a Hugging Face causal LM"):
        graft(torch.nn.Linear(2, 2), small_graft_config())


def test_bridge_import_stands_alone():
    import subprocess
    import sys

    code = (
        "import sys, graftkit.bridge\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('datasets', 'graftkit_ct_rate', 'graftkit_encoders') or m == 'graftkit.plugins']\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_grafting_with_lora_prints_no_deprecation_warning(tmp_path):
    """peft reads transformers' deprecated ``is_gradient_checkpointing`` on every wrap; graftkit
    silences exactly that FutureWarning, around that call only."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = graft(make_model("llama"), small_graft_config())
        g.save_pretrained(tmp_path / "g")
        GraftedLM.from_pretrained(tmp_path / "g", make_model("llama"))
        warnings.warn("still reported", FutureWarning, stacklevel=1)
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert messages == ["still reported"]


def test_the_parameter_group_list_is_defined_once():
    from graftkit.bridge import BRIDGE_GROUPS
    from graftkit.config import PARAMETER_GROUPS

    assert BRIDGE_GROUPS is PARAMETER_GROUPS
