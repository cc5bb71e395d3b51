"""BERTScore from a local model directory, cross-checked against the authors' bert-score package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from graftkit.eval.metrics import MetricUnavailableError
from graftkit.eval.model_metrics import BERTScorer, bertscore

WORDS = [
    "the",
    "heart",
    "is",
    "normal",
    "in",
    "size",
    "no",
    "pleural",
    "effusion",
    "mild",
    "emphysema",
    "nodule",
    "lung",
    "right",
    "left",
    "lobe",
    "upper",
    "lower",
    "bilateral",
    "atelectasis",
    "and",
    "of",
    "a",
    "with",
    ".",
    ",",
]
CANDIDATES = [
    "The heart is normal in size.",
    "Mild emphysema with a nodule in the left lower lobe.",
    "No pleural effusion.",
    "",
]
REFERENCES = [
    "The heart is normal.",
    "Bilateral emphysema, a nodule in the right upper lobe.",
    "Bilateral pleural effusion and atelectasis.",
    "No nodule.",
]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 3-layer random BERT (hidden 32) and a word-level WordPiece vocabulary, saved locally."""
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s"]
    BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, model_max_length=64).save_pretrained(
        path
    )
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("layer", [1, 3])
def test_bertscore_equals_the_bert_score_package(tiny_bert, layer):
    bert_score = pytest.importorskip("bert_score")
    expected = bert_score.score(
        CANDIDATES[:3], REFERENCES[:3], model_type=str(tiny_bert), num_layers=layer, batch_size=2
    )
    got = BERTScorer(tiny_bert, layer=layer, batch_size=3).score(CANDIDATES[:3], REFERENCES[:3])
    for k, name in enumerate(("precision", "recall", "f1")):
        np.testing.assert_allclose(got[name], expected[k].numpy(), atol=1e-5)
    assert not np.allclose(got["f1"], got["f1"][0])  # the scores do depend on the texts


def test_bertscore_by_hand_for_one_pair(tiny_bert):
    """P and R from the definition: greedy max cosine, [CLS]/[SEP] weighted 0 but matchable."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModel.from_pretrained(tiny_bert).eval()

    def embed(text: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            h = model(**ids, output_hidden_states=True).hidden_states[2][0]
        special = torch.tensor([i in (2, 3) for i in ids["input_ids"][0].tolist()])
        return torch.nn.functional.normalize(h, dim=-1), ~special

    c, c_keep = embed(CANDIDATES[1])
    r, r_keep = embed(REFERENCES[1])
    sim = c @ r.T
    precision = sim.max(dim=1).values[c_keep].mean().item()
    recall = sim.max(dim=0).values[r_keep].mean().item()
    got = bertscore(CANDIDATES[1:2], REFERENCES[1:2], tiny_bert, layer=2)
    assert got["precision"] == pytest.approx(precision, abs=1e-6)
    assert got["recall"] == pytest.approx(recall, abs=1e-6)
    assert got["f1"] == pytest.approx(2 * precision * recall / (precision + recall), abs=1e-6)
    assert got["layer"] == 2


def test_identical_texts_score_one_and_empty_scores_zero(tiny_bert):
    got = BERTScorer(tiny_bert).score(REFERENCES, REFERENCES)
    np.testing.assert_allclose(got["f1"], 1.0, atol=1e-6)
    empty = BERTScorer(tiny_bert).score(CANDIDATES[3:], REFERENCES[3:])
    assert empty["f1"][0] == 0.0 and empty["precision"][0] == 0.0


def test_missing_model_directory_is_reported(tmp_path):
    with pytest.raises(MetricUnavailableError, match="no model directory"):
        BERTScorer(tmp_path / "absent")


def test_bad_arguments(tiny_bert):
    with pytest.raises(ValueError, match=r"layer must be in 0\.\.3"):
        BERTScorer(tiny_bert, layer=4)
    with pytest.raises(ValueError, match="candidates has 1 texts but references has 2"):
        BERTScorer(tiny_bert).score(["a"], ["a", "b"])


ANALYSIS = """[Explanation]:
The candidate misses the nodule and invents an effusion.

[Clinically Significant Errors]:
(a) False report of a finding in the candidate: 1. Pleural effusion
(b) Missing a finding present in the reference: 2. Lung nodule; emphysema
(c) Misidentification of a finding's anatomic location/position: 0.
(d) Misassessment of the severity of a finding: 0.
(e) Mentioning a comparison that isn't in the reference: 0.
(f) Omitting a comparison detailing a change from a prior study: 0.

[Clinically Insignificant Errors]:
(a) False report of a finding in the candidate: 0.
(b) Missing a finding present in the reference: 1. Small granuloma

[Matched Findings]:
3. Cardiomegaly; atelectasis; hiatal hernia
"""


def test_parse_green_hand_written_response():
    from graftkit.eval.model_metrics import parse_green

    got = parse_green(ANALYSIS)
    assert got["matched_findings"] == 3
    assert got["significant_errors"] == {"a": 1, "b": 2, "c": 0, "d": 0, "e": 0, "f": 0}
    assert got["insignificant_errors"]["b"] == 1
    assert got["green"] == pytest.approx(3 / (3 + 1 + 2))  # insignificant errors do not count
    no_errors = ANALYSIS.replace(
        ANALYSIS[ANALYSIS.index("(a) False") : ANALYSIS.index("\n\n[Clinically Insig")],
        "No clinically significant errors.",
    )
    assert parse_green(no_errors)["green"] == 1.0
    nothing_matched = ANALYSIS.replace("3. Cardiomegaly", "0. None")
    assert parse_green(nothing_matched)["green"] == 0.0
    assert parse_green("the heart is normal") is None  # not the judge's format: unparsed, not 0


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer random Llama with a byte-level BPE tokenizer (256 bytes, no merges), saved locally."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["</s>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>")
    tokenizer.save_pretrained(path)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=vocab["</s>"],
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_green_scorer_runs_the_judge_and_scores_its_format(tiny_llama, monkeypatch):
    from graftkit.eval.model_metrics import GREENScorer, green_prompt

    scorer = GREENScorer(tiny_llama, batch_size=2, max_length=2200)  # prompt: ~2,100 bytes
    rendered = scorer.render(REFERENCES[1], CANDIDATES[1])
    assert rendered.startswith("<|user|>\n" + green_prompt(REFERENCES[1], CANDIDATES[1]) + "</s>")
    assert rendered.rstrip().endswith("<|assistant|>")
    # a random judge writes no analysis in the format: every pair is unparsed, none scored 0
    got = scorer.score(CANDIDATES[:3], REFERENCES[:3])
    assert got["unparsed"] == 3 and got["green"] is None and got["per_report"] == [None] * 3
    assert len(got["analyses"]) == 3
    monkeypatch.setattr(scorer, "analyse", lambda c, r: [ANALYSIS, "garbage"])
    got = scorer.score(CANDIDATES[:2], REFERENCES[:2])
    assert got["per_report"] == [pytest.approx(0.5), None] and got["unparsed"] == 1


def test_green_missing_model_directory_is_reported(tmp_path):
    from graftkit.eval.model_metrics import GREENScorer

    with pytest.raises(MetricUnavailableError, match="GREEN: no model directory"):
        GREENScorer(tmp_path)
