"""Predictor, NormCalibrator and the heads (docs/design.md data flow)."""

from __future__ import annotations

import pytest
import torch

from graftkit.bridge import BridgeHeads, NormCalibrator, Predictor


def test_predictor_is_dropout_linear_layernorm():
    torch.manual_seed(0)
    pred = Predictor(8, 12, dropout=0.5)
    x = torch.randn(3, 5, 8)
    pred.eval()
    want = torch.nn.functional.layer_norm(x @ pred.linear.weight.T + pred.linear.bias, (12,))
    torch.testing.assert_close(pred(x), want * pred.norm.weight + pred.norm.bias)
    pred.train()
    torch.manual_seed(1)
    assert not torch.allclose(pred(x), pred.eval()(x))  # dropout is active in training only
    with pytest.raises(ValueError, match="d_v=8"):
        pred(torch.randn(2, 7))


def test_predictor_svd_init_maps_visual_components_to_text_components():
    torch.manual_seed(0)
    text_dirs = torch.linalg.qr(torch.randn(12, 12))[0][:, :3].T
    vis_dirs = torch.linalg.qr(torch.randn(8, 8))[0][:, :3].T
    text = torch.randn(500, 3) * torch.tensor([6.0, 3.0, 1.5]) @ text_dirs + 0.01 * torch.randn(
        500, 12
    )
    visual = torch.randn(400, 3) * torch.tensor([5.0, 2.0, 1.0]) @ vis_dirs + 0.01 * torch.randn(
        400, 8
    )
    pred = Predictor(8, 12, dropout=0.0)
    pred.init_from_text_embeddings(text, visual)
    weight = pred.linear.weight.detach()
    for i in range(3):
        image = weight @ vis_dirs[i]
        assert abs(float(image @ text_dirs[i])) == pytest.approx(1.0, abs=1e-2)
    torch.testing.assert_close(pred.norm.bias.detach(), text.mean(dim=0))


@pytest.mark.parametrize("as_matrix", [True, False])
def test_calibrated_tokens_have_the_text_embedding_norm(as_matrix):
    torch.manual_seed(0)
    text = torch.randn(100, 16) * 0.02
    visual = torch.randn(4, 32, 16) * 3.0
    calib = NormCalibrator()
    text_norm = text.norm(dim=-1).mean()
    alpha = calib.recalibrate(text if as_matrix else float(text_norm), visual)
    out = calib(visual)
    assert float(out.detach().norm(dim=-1).mean()) == pytest.approx(float(text_norm), rel=1e-5)
    assert alpha == pytest.approx(float(text_norm / visual.norm(dim=-1).mean()), rel=1e-5)
    assert float(calib.target_norm) == pytest.approx(float(text_norm), rel=1e-5)
    out.pow(2).sum().backward()
    assert calib.alpha.grad is not None and float(calib.alpha.grad) != 0.0  # alpha is learned
    with pytest.raises(ValueError, match="visual token norm"):
        calib.recalibrate(text, torch.zeros(2, 16))


def test_heads_against_brute_force():
    torch.manual_seed(0)
    heads = BridgeHeads(16, num_classes=5, jepa_dim=8).eval()
    tokens = torch.randn(3, 4, 16)
    assert heads.jepa(tokens).shape == (3, 8)
    torch.testing.assert_close(heads.jepa(tokens), heads.jepa_head(tokens.mean(dim=1)))
    per_token = heads.jepa_tokens(tokens)
    assert per_token.shape == (3, 4, 8)
    torch.testing.assert_close(per_token[:, 2], heads.jepa_head(tokens[:, 2]))
    torch.testing.assert_close(
        heads.cls(tokens), tokens.mean(dim=1) @ heads.classifier.weight.T + heads.classifier.bias
    )
    logits = torch.stack([heads.mil_classifier(tokens[:, k]) for k in range(4)], dim=1)
    torch.testing.assert_close(heads.mil(tokens), logits.max(dim=1).values)
    hidden = torch.randn(3, 16)
    torch.testing.assert_close(heads.llm_cls(hidden), heads.llm_classifier(hidden))
    with pytest.raises(ValueError, match=r"heads\.mil"):
        heads.mil(torch.randn(3, 16))


def test_folded_cross_attention_equals_multi_head_attention():
    from graftkit.bridge import GatedCrossAttention

    torch.manual_seed(0)
    xattn = GatedCrossAttention(24, num_heads=4, kv_dim=16).eval()
    with torch.no_grad():
        xattn.gate.fill_(0.8)
    hidden, visual = torch.randn(2, 5, 24), torch.randn(2, 7, 16)
    want = xattn.reference(hidden, visual)
    for fold in (True, False):
        kv = xattn.visual_kv(visual, fold=fold)
        assert kv.folded is fold
        torch.testing.assert_close(xattn(hidden, kv), want, atol=1e-5, rtol=1e-5)
    assert xattn.visual_kv(visual).folded is False  # 2·7·3 = 42 >= 24: folding would cost more
    assert xattn.visual_kv(visual[:1, :2]).folded is True  # 1·2·3 = 6 < 24
    with torch.no_grad():
        xattn.gate.zero_()
    assert torch.equal(xattn(hidden, xattn.visual_kv(visual)), hidden)
