"""The language prior: training lowers the loss, the cache is content-addressed and atomic."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from transformers import LlamaForCausalLM

import graftkit.lm.prior as prior_module
from graftkit.lm import (
    PRIOR_CHAT_TEMPLATE,
    build_or_load_prior,
    encode_chat,
    language_model_loss,
    load_llm,
    prior_cache_key,
    train_prior,
)
from graftkit.progress import progress_bar


def _entries(cache) -> list[str]:
    """The cache's entries, less the lock files that serialise builds."""
    return sorted(p.name for p in cache.iterdir() if p.suffix != ".lock")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus, tiny_prior_config):
    """The tiny prior built through the cache, with the per-step losses it reported."""
    cache = tmp_path_factory.mktemp("cache")
    seen: list[tuple[int, int, float]] = []
    path = build_or_load_prior(corpus, tiny_prior_config, cache, progress=lambda *a: seen.append(a))
    return cache, path, seen


def test_training_lowers_the_loss_and_the_cache_hits(
    trained, corpus, tiny_prior_config, tmp_path, monkeypatch
):
    cache, path, seen = trained
    untrained = train_prior(
        corpus, tiny_prior_config.model_copy(update={"steps": 0}), tmp_path / "init"
    )
    init_model, init_tok = load_llm(untrained)
    model, tokenizer = load_llm(path)
    uniform = math.log(len(tokenizer))
    before = language_model_loss(init_model, init_tok, corpus)
    after = language_model_loss(model, tokenizer, corpus)
    assert abs(before - uniform) < 0.5  # a fresh model is near uniform
    assert after < before - 0.5
    assert [s for s, _, _ in seen] == [5] and seen[0][1] == 5

    def no_retraining(*args, **kwargs):
        raise AssertionError("train_prior called on a cache hit")

    monkeypatch.setattr(prior_module, "train_prior", no_retraining)
    started = time.perf_counter()
    assert build_or_load_prior(list(corpus), tiny_prior_config, cache) == path
    assert time.perf_counter() - started < 1.0
    assert _entries(cache) == [path.name]


def test_prior_directory_is_a_normal_hf_model(trained, corpus, tiny_prior_config):
    _, path, _ = trained
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert {"chat_template.jinja", "prior.json"} <= names
    model, tokenizer = load_llm(path)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.hidden_size == tiny_prior_config.hidden_size
    assert model.config.num_hidden_layers == tiny_prior_config.num_hidden_layers
    assert model.config.vocab_size == len(tokenizer)
    generation = model.generation_config
    assert (generation.eos_token_id, generation.pad_token_id) == (
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    assert tokenizer.chat_template == PRIOR_CHAT_TEMPLATE and tokenizer.padding_side == "left"
    manifest = json.loads((path / "prior.json").read_text())
    assert manifest["key"] == prior_cache_key(corpus, tiny_prior_config)
    assert manifest["num_texts"] == len(corpus) and manifest[
        "config"
    ] == tiny_prior_config.model_dump(mode="json")
    assert [step for step, _ in manifest["loss_history"]] == [5]
    prompt = torch.tensor([encode_chat(tokenizer, "Describe.", None, 4)["input_ids"]])
    out = model.generate(input_ids=prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > prompt.shape[1]


def test_same_seed_same_prior(corpus, tiny_prior_config, tmp_path):
    config = tiny_prior_config.model_copy(update={"steps": 2})
    torch.manual_seed(123)
    a, b = (train_prior(corpus, config, tmp_path / name, log_every=1) for name in "ab")
    untouched = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), untouched)  # the caller's RNG stream is not reseeded
    history = [json.loads((p / "prior.json").read_text())["loss_history"] for p in (a, b)]
    assert history[0] == history[1] and len(history[0]) == 2
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_killed_build_leaves_nothing_that_is_used(corpus, tiny_prior_config, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    real_train = prior_module.train_prior

    def killed(texts, config, output_dir, progress=None):
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(prior_module, "train_prior", killed)
    with pytest.raises(KeyboardInterrupt):
        build_or_load_prior(corpus, tiny_prior_config, cache)
    assert _entries(cache) == []

    # A build killed by SIGKILL leaves its temporary folder (and releases its lock): the next
    # build of that key, holding the lock, removes it.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    final_name = f"prior-{prior_cache_key(corpus, tiny_prior_config)[:16]}"
    stale = cache / f".{final_name}.tmp-{int(dead.stdout)}-deadbeef"
    stale.mkdir()
    monkeypatch.setattr(prior_module, "train_prior", real_train)
    path = build_or_load_prior(corpus, tiny_prior_config, cache)
    assert _entries(cache) == [final_name] and path.name == final_name

    (path / "prior.json").unlink()  # a damaged cache entry is reported, never used
    with pytest.raises(RuntimeError, match="delete it to rebuild"):
        build_or_load_prior(corpus, tiny_prior_config, cache)


def test_concurrent_builds_of_one_key_train_once(corpus, tiny_prior_config, tmp_path, monkeypatch):
    """The second builder waits on the first's lock, then uses its directory."""
    calls = []

    def slow_train(texts, config, output_dir, progress=None):
        calls.append(output_dir)
        time.sleep(0.5)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "prior.json").write_text(json.dumps({"steps": 0}))

    monkeypatch.setattr(prior_module, "train_prior", slow_train)
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(2) as pool:
        paths = list(
            pool.map(lambda _: build_or_load_prior(corpus, tiny_prior_config, cache), range(2))
        )
    assert len(calls) == 1 and paths[0] == paths[1]
    assert _entries(cache) == [paths[0].name]


def test_cache_key_covers_texts_and_config(corpus, tiny_prior_config):
    key = prior_cache_key(corpus, tiny_prior_config)
    assert key == prior_cache_key(list(corpus), tiny_prior_config.model_copy())
    assert key != prior_cache_key(corpus[::-1], tiny_prior_config)
    assert key != prior_cache_key(corpus, tiny_prior_config.model_copy(update={"seed": 1}))
    assert prior_cache_key(["ab", "c"], tiny_prior_config) != prior_cache_key(
        ["a", "bc"], tiny_prior_config
    )


def test_progress_reporting(corpus, tiny_prior_config, tmp_path, capsys):
    config = tiny_prior_config.model_copy(update={"steps": 5})
    calls = []
    train_prior(corpus, config, tmp_path / "cb", progress=lambda *a: calls.append(a), log_every=2)
    assert [(s, n) for s, n, _ in calls] == [(2, 5), (4, 5), (5, 5)]
    assert all(math.isfinite(loss) for _, _, loss in calls)
    with progress_bar(disable=True) as bar:
        train_prior(corpus, config, tmp_path / "rich", progress=bar)
        (task,) = bar.tasks
        assert task.completed == task.total == 5 and task.fields["info"].startswith("loss ")
    capsys.readouterr()
    train_prior(corpus, config, tmp_path / "quiet")
    assert capsys.readouterr() == ("", "")


def test_bad_inputs(corpus, tiny_prior_config, tmp_path):
    with pytest.raises(ValueError, match="no non-empty text among 2"):
        train_prior(["", " "], tiny_prior_config, tmp_path / "a")
    with pytest.raises(
        ValueError, match="text 1 contains the reserved special token '<\\|visual_region\\|>'"
    ):
        train_prior(["ok", "a <|visual_region|> b"], tiny_prior_config, tmp_path / "b")
    with pytest.raises(TypeError, match="not one string"):
        train_prior("one document", tiny_prior_config, tmp_path / "c")
    bad = tiny_prior_config.model_copy(update={"num_attention_heads": 3, "num_key_value_heads": 3})
    with pytest.raises(
        ValueError, match=r"hidden_size=32 is not divisible by prior\.num_attention_heads=3"
    ):
        train_prior(corpus, bad, tmp_path / "d")
    long = tiny_prior_config.model_copy(update={"max_length": 256})
    with pytest.raises(
        ValueError, match=r"max_length=256 exceeds prior\.max_position_embeddings=128"
    ):
        train_prior(corpus, long, tmp_path / "e")
