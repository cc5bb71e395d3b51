"""graft() into tiny Llama / Qwen2 / Mistral decoders (docs/design.md, "Grafting into a Hugging Face decoder")."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_decoders import FAMILIES, make_model, make_tokenizer, small_graft_config

from graftkit.bridge import (
    graft,
)

K = 4


def _setup(family="llama", gate=0.0, **overrides):
    tok = make_tokenizer()
    base = make_model(family)
    reference = copy.deepcopy(base)
    g = graft(base, small_graft_config(**overrides), tok).eval()
    with torch.no_grad():
        for adapter in g.xattn.values():
            adapter.gate.fill_(gate)
    return g, reference, tok


def _visual(g, batch=1, seed=0):
    torch.manual_seed(seed)
    return torch.randn(batch, K, g.hidden_size)


def _prompts(g, tok, texts):
    return tok([g.expand_prompt(t) for t in texts], return_tensors="pt", padding=True)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fresh_graft_leaves_the_base_model_unchanged(family):
    g, base, tok = _setup(family)
    enc = tok(["w1 w2 w3 w4", "w5 w6"], return_tensors="pt", padding=True)
    vocab = base.config.vocab_size
    with torch.no_grad():
        want = base(**enc).logits
        text_only = g(**enc).logits
        with_adapters = g(**enc, visual_tokens=_visual(g, 2)).logits  # gates 0, LoRA B = 0
    assert torch.equal(text_only[..., :vocab], want)
    assert torch.equal(with_adapters[..., :vocab], want)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_placeholders_are_masked_scattered_into_inputs_embeds(family):
    g, base, tok = _setup(family)
    enc = _prompts(g, tok, ["w1 <image> w2", "w3 w4 w5 <image>"])
    visual = _visual(g, 2)
    embeds = base.get_input_embeddings()(enc.input_ids.clamp(max=base.config.vocab_size - 1))
    placeholder = enc.input_ids == g.visual_token_id
    assert placeholder.sum(dim=1).tolist() == [K, K]
    embeds[placeholder] = visual.reshape(-1, g.hidden_size)
    with torch.no_grad():
        want = base(inputs_embeds=embeds, attention_mask=enc.attention_mask).logits
        got = g(**enc, visual_tokens=visual).logits
    torch.testing.assert_close(got[..., : base.config.vocab_size], want, atol=1e-6, rtol=1e-6)


def test_nonzero_gate_makes_logits_depend_on_visual_tokens():
    g, _, tok = _setup(gate=0.0)
    enc = tok(["w1 w2 w3"], return_tensors="pt")  # no placeholders: only the adapters see Ṽ
    with torch.no_grad():
        a, b = (g(**enc, visual_tokens=_visual(g, seed=s)).logits for s in (0, 1))
        assert torch.equal(a, b)
        for adapter in g.xattn.values():
            adapter.gate.fill_(0.5)
        a, b = (g(**enc, visual_tokens=_visual(g, seed=s)).logits for s in (0, 1))
    assert (a - b).abs().max() > 1e-3


def test_placeholder_count_and_visual_shape_errors():
    g, _, tok = _setup()
    short = tok([g.config.visual_token * 3 + " w1"], return_tensors="pt")
    with pytest.raises(ValueError, match=r"row 0 of input_ids holds 3 .* expected K=4"):
        g(**short, visual_tokens=_visual(g))
    full = _prompts(g, tok, ["w1"])
    with pytest.raises(ValueError, match="no visual_tokens were given"):
        g(**full)
    with pytest.raises(ValueError, match=r"visual_tokens must be \[B, 4, 32\]"):
        g(**full, visual_tokens=torch.randn(1, 5, 32))


def test_labels_ignore_placeholder_positions():
    g, _, tok = _setup(gate=0.3)
    enc = _prompts(g, tok, ["w1 w2 <image> w3 w4"])
    visual = _visual(g)
    with torch.no_grad():
        out = g(**enc, visual_tokens=visual, labels=enc.input_ids)
        logits = out.logits[0, :-1]
        target = enc.input_ids[0, 1:]
        keep = target != g.visual_token_id
        want = torch.nn.functional.cross_entropy(logits[keep], target[keep])
    torch.testing.assert_close(out.loss, want)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_generation_with_and_without_kv_cache_agrees(family):
    g, _, tok = _setup(family, gate=1.0)
    enc = _prompts(g, tok, ["w1 w2 <image> w3"])
    visual = _visual(g)
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    cached = g.generate(visual, **enc, use_cache=True, **kw)
    uncached = g.generate(visual, **enc, use_cache=False, **kw)
    assert torch.equal(cached, uncached)
    other = g.generate(_visual(g, seed=5) * 3, **enc, use_cache=True, **kw)
    assert not torch.equal(cached, other)  # the visual tokens steer generation


def test_adapters_run_on_every_decode_step_and_visual_kv_once():
    g, _, tok = _setup(gate=0.5)
    calls = {i: [] for i in g.xattn_layers}
    kv_calls = dict.fromkeys(g.xattn_layers, 0)
    for i in g.xattn_layers:
        adapter = g.xattn[str(i)]
        adapter.register_forward_hook(lambda m, a, o, i=i: calls[i].append(a[0].shape[1]))
        original = adapter.visual_kv

        def counted(v, i=i, original=original):
            kv_calls[i] += 1
            return original(v)

        adapter.visual_kv = counted
    enc = _prompts(g, tok, ["w1 <image> w2"])
    steps = 7
    g.generate(_visual(g), **enc, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    prompt_len = enc.input_ids.shape[1]
    for i in g.xattn_layers:
        assert calls[i] == [prompt_len] + [1] * (
            steps - 1
        )  # prefill, then one call per cached step
        assert kv_calls[i] == 1
    assert g._slot.current is None  # nothing left bound after the call


def test_left_padded_batch_generates_as_each_prompt_alone():
    g, _, tok = _setup(gate=0.7)
    texts = ["w1 <image> w2", "w3 w4 w5 w6 w7 <image> w8 w9"]
    visual = torch.cat([_visual(g, seed=1), _visual(g, seed=2)])
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    batch = g.generate(visual, **_prompts(g, tok, texts), **kw)
    for row, text in enumerate(texts):
        alone = g.generate(visual[row : row + 1], **_prompts(g, tok, [text]), **kw)
        assert batch[row, -6:].tolist() == alone[0, -6:].tolist()


def test_beam_search_and_sampling_options_expand_visual_tokens_per_item():
    g, _, tok = _setup(gate=0.7)
    texts = ["w1 <image> w2", "w3 <image> w4 w5"]
    visual = torch.cat([_visual(g, seed=3), _visual(g, seed=4)])
    beams = dict(max_new_tokens=5, min_new_tokens=5, num_beams=3, do_sample=False)
    batch = g.generate(visual, **_prompts(g, tok, texts), **beams)
    for row, text in enumerate(texts):
        alone = g.generate(visual[row : row + 1], **_prompts(g, tok, [text]), **beams)
        assert batch[row, -5:].tolist() == alone[0, -5:].tolist()
    scored = g.generate(
        visual,
        **_prompts(g, tok, texts),
        max_new_tokens=3,
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert all(bool((step[:, g.visual_token_id] == float("-inf")).all()) for step in scored.scores)
    torch.manual_seed(0)
    sampled = g.generate(
        visual,
        **_prompts(g, tok, texts),
        max_new_tokens=12,
        do_sample=True,
        top_p=0.9,
        temperature=0.6,
        repetition_penalty=1.15,
        no_repeat_ngram_size=2,
        num_return_sequences=2,
    )
    assert sampled.shape[0] == 4
    prompt_len = _prompts(g, tok, texts).input_ids.shape[1]
    for seq in sampled[:, prompt_len:].tolist():
        pairs = [
            tuple(seq[i : i + 2])
            for i in range(len(seq) - 1)
            if tok.pad_token_id not in seq[i : i + 2]
        ]
        assert len(pairs) == len(set(pairs))  # no_repeat_ngram_size=2 holds
        assert g.visual_token_id not in seq


def test_skipping_adapters_on_decode_steps_changes_generation():
    """The paper's bug as an ablation: adapters skipped after the prompt give other tokens."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from graftkit.bridge import GraftConfig, graft

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    glm = graft(
        model,
        GraftConfig(
            visual_dim=8, num_zones=4, num_heads=2, xattn_heads=4, num_classes=3, jepa_dim=8
        ),
    )
    for name, p in glm.named_parameters():
        if name.endswith("gate"):
            torch.nn.init.constant_(p, 3.0)
    visual = torch.randn(1, 4, 32) * 5
    ids = torch.randint(0, 60, (1, 6))
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    every = glm.generate(visual_tokens=visual, input_ids=ids, **kw)
    skipped = glm.generate(visual_tokens=visual, input_ids=ids, xattn_on_decode=False, **kw)
    assert every[0, 6] == skipped[0, 6]  # the first new token comes from the prompt pass: same
    assert not torch.equal(every, skipped)
