"""Run presets of the ``hf`` dataset (registered by :mod:`graftkit.builtin`).

The sizes are those of the CT-RATE plugin's ``tiny`` and ``smoke`` profiles
(``plugins/ct_rate/graftkit_ct_rate/profiles.py``, where each choice is explained and measured),
less what is particular to CT-RATE: its synthetic cohort (``data.synth``) and its compressor
preset. ``hf-tiny`` keeps the budgets in epochs and the paper's phase 4 that CT-RATE's ``tiny``
had before its budgets became optimizer steps and its phase 4 the summarised narrative: those two
were measured on CT-RATE cohorts only (docs/benchmarks.md, "Phase 4 at the embedded default's
scale"); set them with ``--set phases.pN.steps=...`` and ``--set phases.p4.text=...``. They shrink
the model and the schedule only; the curriculum, its losses and the evaluation are graftkit's
paper config. The embedding width ``d`` comes from the data.

- ``hf-tiny``, the dataset's default: a small language prior pretrained on the training reports
  and canonical findings texts, K = 32 zones, phases 1-4 sized for a few thousand samples on a
  CPU (CT-RATE's ``tiny``: 12 min 43 s for 2,500 training volumes on 2 cores).
- ``hf-smoke``: every phase once, for CI and for checking that a dataset goes through (the
  end-to-end test's 48 + 16 rows run in well under a minute).
"""

from __future__ import annotations

from typing import Any

from graftkit.config import Profile


def _phase(n: int, **fields: Any) -> dict[str, Any]:
    return {f"phases.p{n}.{k}": v for k, v in fields.items()}


TINY: dict[str, Any] = {
    "model.prior.vocab_size": 1024,
    "model.prior.hidden_size": 128,
    "model.prior.intermediate_size": 384,
    "model.prior.num_hidden_layers": 4,
    "model.prior.max_length": 256,
    "model.prior.steps": 500,
    "model.prior.corpus": ["narrative", "canonical_findings"],
    "bridge.num_heads": 4,
    "bridge.num_global_layers": 0,
    "bridge.position_scale": 0.1,
    "bridge.xattn_heads": 4,
    "bridge.whitening_components": 64,
    "model.lora.r": 8,
    "model.lora.alpha": 16,
    "model.lora.dropout": 0.0,
    "eval.batch_size": 100,
    "eval.monitor_subset": 100,
    "eval.generation.max_new_tokens": 128,
    "eval.generation.do_sample": False,
    **_phase(1, epochs=10, batch_size=32, lr=3e-3, **{"early_stopping.metric": "valid_mil"}),
    **_phase(2, epochs=3, batch_size=64, lr=5e-4),
    **_phase(
        3,
        epochs=10,
        batch_size=16,
        lr=2e-3,
        text="canonical_findings",
        losses={"lm": 1.0},
        finding_weight=2.0,
        schedule="cosine",
        **{"early_stopping.patience": 4, "callbacks.lars_projector_lr": None},
    ),
    **_phase(4, epochs=1, batch_size=16),
}

SMOKE: dict[str, Any] = {
    **TINY,
    "model.prior.steps": 20,
    "model.prior.hidden_size": 32,
    "model.prior.intermediate_size": 64,
    "model.prior.num_hidden_layers": 2,
    "model.prior.vocab_size": 400,
    "bridge.num_zones": 8,
    "bridge.whitening_components": 16,
    "eval.batch_size": 16,
    "eval.monitor_subset": 8,
    "eval.generation.max_new_tokens": 24,
    "eval.probe_folds": 2,
    **_phase(1, epochs=1, batch_size=16),
    **_phase(2, epochs=1, batch_size=16),
    **_phase(3, epochs=2, batch_size=16, **{"callbacks.freeze_lora.after_epoch": 1}),
    **_phase(4, epochs=1, batch_size=16),
}

PROFILES = [
    Profile(
        name="hf-tiny",
        description="hf default: CT-RATE tiny's sizes (language prior, K=32), any embeddings",
        dataset="hf",
        overrides=TINY,
    ),
    Profile(
        name="hf-smoke",
        description="hf CI smoke: CT-RATE smoke's sizes, every phase once",
        dataset="hf",
        overrides=SMOKE,
    ),
]
