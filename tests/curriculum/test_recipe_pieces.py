"""The phase-3 recipe pieces of the tiny profile: canonical text, finding-weighted LM loss, probes, oracle."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from graftkit.curriculum.batches import finding_weights
from graftkit.data import GraftDataset, Volume
from graftkit.eval.generation import label_token_oracle
from graftkit.eval.probe import mil_probe
from graftkit.lm import train_tokenizer


class _Texts(GraftDataset):
    name = "texts"
    class_names: ClassVar[list[str]] = ["Alpha", "Beta", "Gamma"]
    normal_text = "Nothing found."
    embedding_dim = 4

    def records(self, split):
        return []

    def load(self, volume):
        raise AssertionError

    def condition_texts(self, volume):
        return []

    def class_text(self, c):
        return ["Alpha is seen.", "There is beta.", "Gamma is present."][c]

    def finding_phrase(self, c):
        return "Gamma ray" if c == 2 else super().finding_phrase(c)


def _volume(labels) -> Volume:
    return Volume("v", "train", np.asarray(labels), "")


@pytest.fixture(scope="module")
def dataset():
    return _Texts(None, workdir=".")


@pytest.fixture(scope="module")
def tokenizer():
    corpus = ["Alpha. Beta. Gamma ray.", "Nothing found."] * 20
    return train_tokenizer(corpus, vocab_size=320, min_frequency=1)


def test_prior_corpus_holds_each_requested_text_kind_of_the_training_split():
    class _Split(_Texts):
        splits = ("train", "valid")

        def records(self, split):
            if split != "train":
                raise AssertionError("the prior must see the training split only")
            return [
                Volume("a", "train", np.asarray([1, 0, 1]), "Alpha and gamma seen."),
                Volume("b", "train", np.asarray([0, 0, 0]), "Clear."),
            ]

    data = _Split(None, workdir=".")
    assert data.corpus() == ["Alpha and gamma seen.", "Clear."]
    assert data.corpus(["narrative", "canonical_findings"]) == [
        "Alpha and gamma seen.",
        "Clear.",
        "Alpha. Gamma ray.",
        "Nothing found.",
    ]


def test_canonical_text_names_positive_classes_in_class_order(dataset):
    assert dataset.canonical_findings_text(_volume([0, 1, 1])) == "Beta. Gamma ray."
    assert dataset.canonical_findings_text(_volume([1, 0, 0])) == "Alpha."
    assert dataset.canonical_findings_text(_volume([0, 0, 0])) == "Nothing found."


def test_finding_weights_spare_the_stop_token_and_normal_reports():
    labels = torch.tensor([[-100, -100, 5, 6, 7, 2, -100], [-100, 5, 6, 2, -100, -100, -100]])
    weights = finding_weights(labels, torch.tensor([3, 0]), 3.0)
    assert weights[0].tolist() == [1, 1, 3, 3, 3, 1, 1]  # the end-of-turn token keeps 1
    assert weights[1].tolist() == [1] * 7  # the normal text states no finding


def test_label_token_oracle_recovers_a_linear_label_to_token_map():
    glm = torch.nn.Module()  # the two bridge modules the oracle tokens pass through
    glm.predictor, glm.calibrator = torch.nn.Linear(6, 6), torch.nn.Identity()
    with torch.no_grad():
        glm.predictor.weight.copy_(torch.eye(6))
        glm.predictor.bias.zero_()
    rng = np.random.default_rng(0)
    bias, per_class = rng.normal(size=(2, 6)), rng.normal(size=(3, 2, 6))
    labels = (rng.random((50, 3)) < 0.4).astype(np.int64)
    zones = bias + np.einsum("nc,ckd->nkd", labels, per_class)
    noisy = torch.as_tensor(zones + 0.01 * rng.normal(size=zones.shape), dtype=torch.float32)
    query = np.array([[1, 0, 1], [0, 0, 0]])
    oracle = label_token_oracle(glm, noisy, labels, query)
    expected = bias + np.einsum("nc,ckd->nkd", query, per_class)
    assert oracle.shape == (2, 2, 6)
    np.testing.assert_allclose(oracle.numpy(), expected, atol=0.02)


def test_mil_probe_finds_a_localised_signal_and_not_noise():
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 2)) < 0.3).astype(np.int64)
    tokens = rng.normal(size=(300, 8, 5))
    zone = rng.integers(0, 8, size=300)
    for c in range(2):
        rows = labels[:, c] == 1
        tokens[rows, zone[rows], c] += 4.0  # class c: one zone, one direction
    informative = mil_probe(tokens[:200], labels[:200], tokens[200:], labels[200:], steps=300)
    blind = mil_probe(
        rng.normal(size=(200, 8, 5)), labels[:200], tokens[200:], labels[200:], steps=300
    )
    assert informative["macro_f1"] > 0.9
    assert blind["macro_f1"] < 0.6


def test_weighted_lm_loss_with_unit_weights_is_the_models_own_loss():
    from types import SimpleNamespace

    from transformers import LlamaConfig, LlamaForCausalLM

    from graftkit.curriculum.objective import LOSSES

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, 40, (3, 9))
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    labels[2, 7:] = -100  # padding
    out = model(input_ids=ids, labels=labels)
    batch = {"labels_lm": labels}
    plain = LOSSES["lm"].compute(SimpleNamespace(batch=batch, lm_output=out))
    unit = LOSSES["lm"].compute(
        SimpleNamespace(batch={**batch, "lm_weights": torch.ones(3, 9)}, lm_output=out)
    )
    torch.testing.assert_close(unit, plain)
    heavy = torch.ones(3, 9)
    heavy[0, 5] = 10.0
    weighted = LOSSES["lm"].compute(
        SimpleNamespace(batch={**batch, "lm_weights": heavy}, lm_output=out)
    )
    assert not torch.isclose(weighted, plain)


def test_a_summarised_narrative_names_the_findings_before_the_report():
    """Text kind ``summarised_narrative``: the canonical findings text (the positive class names
    in class order) first, then the radiologist's narrative, whole."""
    from types import SimpleNamespace

    from graftkit.data import GraftDataset, Volume, response_text

    class Names(SimpleNamespace):
        normal_text = "No findings."
        canonical_findings_segments = GraftDataset.canonical_findings_segments
        finding_phrase = GraftDataset.finding_phrase
        canonical_findings_text = GraftDataset.canonical_findings_text
        narrative_text = GraftDataset.narrative_text
        summarised_narrative_text = GraftDataset.summarised_narrative_text

    dataset = Names(class_names=["Cardiomegaly", "Emphysema", "Lung nodule"], config=None)
    report = "The heart is enlarged. A 4 mm nodule in the right upper lobe."
    volume = Volume("v", "valid", __import__("numpy").array([1, 0, 1]), report)
    text = response_text(dataset, volume, "summarised_narrative", __import__("random").Random(0))
    assert text == f"Cardiomegaly. Lung nodule. {report}"
    assert text.index("Cardiomegaly") < text.index("Lung nodule") < text.index("The heart")
    normal = Volume("n", "valid", __import__("numpy").array([0, 0, 0]), "Normal study.")
    assert (
        response_text(dataset, normal, "summarised_narrative", None) == "No findings. Normal study."
    )


def test_a_summarised_narrative_weights_its_summary_alone():
    """``finding_weight`` on a ``summarised_narrative`` falls on the opening summary's tokens
    (counted by encoding the summary alone), not on the narrative after it; on a findings text
    it falls on every response token but the end-of-turn one, on the normal text on none."""
    from types import SimpleNamespace

    from graftkit.curriculum.batches import stated_tokens

    def encode(text):  # one token a word, then the end-of-turn token; -100 on the prompt
        return {"labels": [-100, -100] + [1] * len(text.split()) + [2]}  # as encode_chat

    dataset = SimpleNamespace(
        normal_text="No findings.", canonical_findings_text=lambda v: v.summary
    )
    sick = SimpleNamespace(summary="Cardiomegaly. Lung nodule.")
    text = "Cardiomegaly. Lung nodule. The heart is enlarged. A nodule."
    count = stated_tokens(dataset, sick, "summarised_narrative", text, encode(text), encode)
    assert count == 3  # "Cardiomegaly." "Lung" "nodule."; the narrative words unweighted
    labels = torch.tensor([encode(text)["labels"]])
    weights = finding_weights(labels, torch.tensor([count]), 4.0)[0].tolist()
    assert weights == [1, 1, 4, 4, 4] + [1] * 7  # 6 narrative words and the end-of-turn
    normal = SimpleNamespace(summary="No findings.")
    plain = "No findings. Normal study."
    assert stated_tokens(dataset, normal, "summarised_narrative", plain, encode(plain), encode) == 0
    listed = "Cardiomegaly. Lung nodule."
    assert stated_tokens(dataset, sick, "canonical_findings", listed, encode(listed), encode) == 3
    assert (
        stated_tokens(
            dataset, normal, "canonical_findings", "No findings.", encode("No findings."), encode
        )
        == 0
    )


def test_the_collator_weights_the_summary_tokens_of_a_real_encoding(dataset, tokenizer):
    """Through PhaseCollator with a trained tokenizer: ``finding_weight`` 3 on a
    ``summarised_narrative`` marks exactly the tokens of the summary "Alpha. Gamma ray." and
    leaves the narrative and the end-of-turn token at 1; the normal volume gets no weight."""
    from graftkit.curriculum.batches import PhaseCollator
    from graftkit.lm import encode_chat

    sick = Volume("s", "train", np.asarray([1, 0, 1]), "Alpha and gamma seen in the chest.")
    normal = Volume("n", "train", np.asarray([0, 0, 0]), "Clear.")
    items = [
        {"index": i, "slices": torch.zeros(2, 4), "z_mm": torch.zeros(2), "labels": v.labels}
        for i, v in enumerate([sick, normal])
    ]
    for item in items:
        item["labels"] = torch.as_tensor(item["labels"])
    collator = PhaseCollator(
        dataset, [sick, normal], None, tokenizer, "summarised_narrative", 2, seed=0,
        finding_weight=3.0,
    )  # fmt: skip
    batch = collator(items)
    summary = encode_chat(tokenizer, collator.prompt, "Alpha. Gamma ray.", 2)
    n_summary = sum(1 for label in summary["labels"] if label != -100) - 1
    trained = batch["labels_lm"] != -100
    weights = batch["lm_weights"]
    assert weights[0][trained[0]].tolist()[:n_summary] == [3.0] * n_summary
    assert set(weights[0][trained[0]].tolist()[n_summary:]) == {1.0}
    assert set(weights[1].tolist()) == {1.0}
