"""The benchmark suite stays runnable: the quick runner, the GPU script on CPU, and the
numbers the benchmarks derive (FLOP counts, fits, identical samples from both storages)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from graftkit_ct_rate.dataset import CTRateDataset
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM

from benchmarks.__main__ import SUITES, normalise, table
from benchmarks.data_loading import ArrowCTRateDataset, write_arrow, write_cohort
from benchmarks.gpu_paper_scale import (
    decoder_forward_flops,
    decoder_matmul_params,
    llama_config,
)
from benchmarks.scaling import linear_fit
from graftkit.config import DataConfig

ROOT = Path(__file__).resolve().parents[2]


def test_decoder_flops_equal_flop_counter_on_a_tiny_llama():
    """The FLOP model behind every GPU estimate equals torch's count of a real forward."""
    config = llama_config(tiny=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    ids = torch.randint(3, 500, (2, 24))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids)
    # eager attention multiplies the full T x T score matrix before masking it
    assert decoder_forward_flops(config, 2, 24, causal=False) == counter.get_total_flops()


def test_matmul_parameters_of_the_3b_config_match_the_model_class():
    """Llama-3.2-3B: 3.21 B parameters (embeddings tied to the LM head), counted without
    building it: every Linear of a 2-layer copy, scaled to 28 layers, plus the LM head."""
    config = llama_config()
    assert config.num_hidden_layers == 28 and config.hidden_size == 3072
    small = llama_config(overrides={"num_hidden_layers": 2, "vocab_size": 16})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(small)
    per_layer = sum(
        m.weight.numel() for m in model.model.layers[0].modules() if isinstance(m, torch.nn.Linear)
    )
    expected = 28 * per_layer + config.vocab_size * config.hidden_size
    assert decoder_matmul_params(config) == expected
    assert round(decoder_matmul_params(config) / 1e9, 2) == 3.21


def test_linear_fit_recovers_a_line_and_flags_a_curve():
    xs = [32, 100, 200, 400, 600]
    fit = linear_fit(xs, [0.25 + 0.002 * x for x in xs])
    assert fit["slope"] == pytest.approx(0.002) and fit["intercept"] == pytest.approx(0.25)
    assert fit["r2"] == pytest.approx(1.0)
    assert linear_fit(xs, [1e-5 * x**3 for x in xs])["r2"] < 0.95


def test_arrow_storage_gives_the_same_samples_as_npy(tmp_path):
    """Only the storage differs between the two data paths: every sample is identical."""
    write_cohort(tmp_path / "c", volumes=5, dim=8, min_slices=3, max_slices=12, seed=1)
    config = DataConfig(data_dir=tmp_path / "c")
    npy = CTRateDataset(config, tmp_path / "w1")
    arrow = ArrowCTRateDataset(config, tmp_path / "w2", write_arrow(npy, tmp_path / "arrow"))
    volumes = npy.records("train")
    assert volumes[0].meta["num_slices"] == 12
    for volume in volumes:
        (a, za), (b, zb) = npy.load(volume), arrow.load(volume)
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(za, zb)
    raw = np.load(volumes[2].meta["embedding"])
    assert raw.dtype == np.float16
    torch.testing.assert_close(arrow.load(volumes[2])[0], torch.from_numpy(raw.astype(np.float32)))


def test_rows_of_other_suites_are_normalised():
    encoders = {
        "benchmark": "ESTIMATE: encoder on one H100",
        "value": 1.5,
        "unit": "x/s",
        "note": "n",
    }
    bridge = {"benchmark": "b", "setting": "s", "ratio": 1.2, "target": "report", "machine": "m"}
    enc, bri = normalise([encoders, bridge])
    assert enc["estimate"] and enc["benchmark"] == "encoder on one H100"
    assert enc["results"] == {"x/s": 1.5}
    assert bri["results"] == {"ratio": 1.2} and bri["target"] == ""
    text = table([{**enc, "suite": "encoders"}, {**bri, "suite": "bridge"}])
    assert "ESTIMATE: encoder on one H100" in text and "ratio=1.2" in text


@pytest.mark.slow
def test_gpu_paper_scale_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "tiny.json"
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/gpu_paper_scale.py",
            "--tiny",
            "--threads",
            "1",
            "--output",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["parameter_dtype"] == "bfloat16"
    assert (
        result["mixed_precision"] == "no" and result["bridge_dtype"] == "bfloat16"
    )  # no autocast on a CPU
    assert result["tiny"] and result["xattn_layers"] == [1, 2, 3]  # 7/14/21 of 28 -> 4 layers
    assert result["lora_tensors"] == 4 * 7 * 2  # A and B on 7 projections of every layer
    train = result["train"]
    assert train["samples_per_s"] > 0 and all(np.isfinite(train["loss_first_last"]))
    assert 0 < train["bridge_flop_share"] < 1
    for batch in ("batch1", "batch8"):
        gen = result["generation"][batch]
        assert gen["grafted_over_plain_time"] == pytest.approx(
            gen["plain_tokens_per_s"] / gen["grafted_tokens_per_s"]
        )
    h100 = result["estimates"]["H100"]
    assert h100["samples_per_s"] == pytest.approx(8 / h100["step_s"])


@pytest.mark.slow
def test_gpu_smoke_runs_on_cpu(tmp_path):
    """``python -m benchmarks.gpu_smoke --cpu``: the one-command GPU check, at its CPU size."""
    out = tmp_path / "smoke.json"
    env = {
        **__import__("os").environ,
        "GRAFTKIT_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "benchmarks.gpu_smoke", "--cpu", "--output", str(out)]
    cmd += ["--run-dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["problems"] == [] and result["off_device"] == []
    assert result["device"] == "cpu" and result["phases"] == [1, 2, 3, 4]
    assert result["phase3_train_total"][1] < result["phase3_train_total"][0]
    assert result["step_s_median"] > 0 and 0 <= result["macro_f1"] <= 1
    assert "gpu_smoke: ok on cpu" in proc.stdout


@pytest.mark.slow
def test_quick_suite_runs_every_benchmark_in_under_a_minute(tmp_path):
    out = tmp_path / "rows.json"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["suite"] for r in rows} == set(SUITES)
    assert not [r for r in rows if r["setting"] == "FAILED"]
    step = next(r for r in rows if r["benchmark"].startswith("phase-3 step, grafted"))
    shares = step["results"]
    assert shares["bridge_share"] + shares["llm_share"] == pytest.approx(1.0, abs=1e-3)
    loading = [r for r in rows if r["benchmark"].startswith("data loading, ")]
    assert len(loading) == 5
    assert all(
        r["results"]["samples_per_s"] > 0 for r in loading if "samples_per_s" in r["results"]
    )
    assert "| step_time |" in proc.stdout and "| data_loading |" in proc.stdout
    assert elapsed < 60, f"python -m benchmarks --quick took {elapsed:.0f} s (budget 60 s)"
