"""``ct_rate-radbert`` on a tiny random RoBERTa of the official architecture (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from graftkit_ct_rate.classes import CLASSES  # noqa: E402
from graftkit_ct_rate.labels.radbert import RadBertExtractor  # noqa: E402

TEXTS = [
    "No pleural effusion was detected.",
    "Cardiomegaly is observed. Pericardial effusion-thickening was not observed.",
    "Millimetric nodule in the right lung upper lobe, calcified atheroma plaques in the aorta.",
    "Trachea, both main bronchi are open.",
    "Bilateral pleural effusion and passive atelectasis in the adjacent lung parenchyma.",
]


@pytest.fixture(scope="module")
def tiny_radbert(tmp_path_factory) -> dict[str, Path]:
    """A RadBERT-shaped model directory (config + byte-level BPE tokenizer) and a ``.pth``."""
    root = tmp_path_factory.mktemp("radbert")
    model_dir = root / "radbert"
    model_dir.mkdir()
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        TEXTS * 4,
        vocab_size=400,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    bpe.save_model(str(root))
    tokenizer = transformers.RobertaTokenizer(
        vocab=str(root / "vocab.json"), merges=str(root / "merges.txt")
    )
    tokenizer.save_pretrained(model_dir)
    config = transformers.RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=514,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config.save_pretrained(model_dir)

    torch.manual_seed(0)
    encoder = transformers.RobertaModel(config).eval()
    head = torch.nn.Linear(16, len(CLASSES))
    with torch.no_grad():
        head.weight.mul_(40.0)  # spread the logits so both sides of the 0.5 threshold occur
    state = {f"model.{k}": v for k, v in encoder.state_dict().items()}
    state |= {f"classifier.{k}": v for k, v in head.state_dict().items()}
    weights = root / "RadBertClassifier.pth"
    torch.save(state, weights)
    return {"model_dir": model_dir, "weights": weights, "encoder": encoder, "head": head}


def _direct_logits(tiny, texts) -> torch.Tensor:
    """Reference: one text at a time (no padding), pooler output -> Linear."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny["model_dir"])
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=512, return_tensors="pt")
            pooled = tiny["encoder"](**ids).pooler_output
            rows.append(tiny["head"](pooled)[0])
    return torch.stack(rows)


def test_pth_outputs_equal_direct_computation(tiny_radbert):
    extractor = RadBertExtractor(
        model_dir=str(tiny_radbert["model_dir"]), weights=str(tiny_radbert["weights"]), batch_size=2
    )
    expected = _direct_logits(tiny_radbert, TEXTS)
    torch.testing.assert_close(extractor.logits(TEXTS), expected, atol=1e-5, rtol=1e-4)
    labels = extractor.extract(TEXTS)
    assert labels.dtype == np.int64 and labels.shape == (len(TEXTS), len(CLASSES))
    np.testing.assert_array_equal(labels, (torch.sigmoid(expected) >= 0.5).numpy().astype(np.int64))
    assert 0 < labels.sum() < labels.size  # the threshold actually separates something


def test_batch_size_does_not_change_outputs(tiny_radbert):
    one = RadBertExtractor(
        model_dir=tiny_radbert["model_dir"], weights=tiny_radbert["weights"], batch_size=1
    )
    five = RadBertExtractor(
        model_dir=tiny_radbert["model_dir"], weights=tiny_radbert["weights"], batch_size=5
    )
    torch.testing.assert_close(one.logits(TEXTS), five.logits(TEXTS), atol=1e-5, rtol=1e-4)


def test_common_prefixes_load_the_same_weights(tiny_radbert, tmp_path):
    state = torch.load(tiny_radbert["weights"], weights_only=True)
    renamed = {}
    for key, value in state.items():
        key = key.replace("model.", "bert.", 1).replace("classifier.", "linear.", 1)
        renamed[f"module.{key}"] = value
    renamed["module.bert.embeddings.position_ids"] = torch.arange(514)[None]
    path = tmp_path / "ddp.pth"
    torch.save(renamed, path)
    reference = RadBertExtractor(
        model_dir=tiny_radbert["model_dir"], weights=tiny_radbert["weights"]
    )
    ddp = RadBertExtractor(model_dir=tiny_radbert["model_dir"], weights=path)
    torch.testing.assert_close(ddp.logits(TEXTS), reference.logits(TEXTS))


def test_perturbed_head_changes_the_labels(tiny_radbert, tmp_path):
    state = torch.load(tiny_radbert["weights"], weights_only=True)
    state["classifier.bias"] = state["classifier.bias"] + 100.0
    path = tmp_path / "shifted.pth"
    torch.save(state, path)
    shifted = RadBertExtractor(model_dir=tiny_radbert["model_dir"], weights=path)
    assert shifted.extract(TEXTS).min() == 1


def test_bad_pth_names_file_and_keys(tiny_radbert, tmp_path):
    state = torch.load(tiny_radbert["weights"], weights_only=True)
    del state["classifier.weight"]
    state["decoder.extra"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        RadBertExtractor(model_dir=tiny_radbert["model_dir"], weights=path)
    message = str(info.value)
    assert "broken.pth" in message
    assert "classifier.weight" in message and "decoder.extra" in message


def test_wrong_head_shape_and_unreadable_file(tiny_radbert, tmp_path):
    state = torch.load(tiny_radbert["weights"], weights_only=True)
    state["classifier.weight"] = torch.zeros(20, 16)
    state["classifier.bias"] = torch.zeros(20)
    path = tmp_path / "twenty.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"twenty\.pth.*\(20, 16\)"):
        RadBertExtractor(model_dir=tiny_radbert["model_dir"], weights=path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pth"):
        RadBertExtractor(model_dir=tiny_radbert["model_dir"], weights=junk)
    with pytest.raises(ValueError, match="does not exist"):
        RadBertExtractor(model_dir=tiny_radbert["model_dir"], weights=tmp_path / "missing.pth")


def test_hugging_face_sequence_classifier_port(tiny_radbert, tmp_path):
    config = transformers.AutoConfig.from_pretrained(tiny_radbert["model_dir"])
    config.num_labels = len(CLASSES)
    config.problem_type = "multi_label_classification"
    torch.manual_seed(1)
    port = transformers.RobertaForSequenceClassification(config).eval()
    port_dir = tmp_path / "port"
    port.save_pretrained(port_dir)
    transformers.AutoTokenizer.from_pretrained(tiny_radbert["model_dir"]).save_pretrained(port_dir)

    extractor = RadBertExtractor(model_dir=port_dir, batch_size=3)
    tokenizer = transformers.AutoTokenizer.from_pretrained(port_dir)
    with torch.no_grad():
        expected = torch.cat([port(**tokenizer(t, return_tensors="pt")).logits for t in TEXTS])
    torch.testing.assert_close(extractor.logits(TEXTS), expected, atol=1e-5, rtol=1e-4)

    config.num_labels = 5
    wrong_dir = tmp_path / "wrong"
    transformers.RobertaForSequenceClassification(config).save_pretrained(wrong_dir)
    tokenizer.save_pretrained(wrong_dir)
    with pytest.raises(ValueError, match="num_labels=5"):
        RadBertExtractor(model_dir=wrong_dir)


def test_max_length_beyond_positions_is_rejected(tiny_radbert):
    with pytest.raises(ValueError, match="max_length=600"):
        RadBertExtractor(
            model_dir=tiny_radbert["model_dir"], weights=tiny_radbert["weights"], max_length=600
        )
