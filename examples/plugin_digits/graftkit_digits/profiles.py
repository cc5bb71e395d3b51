"""Run presets of the digits plugin (``register_profiles``).

``digits-tiny`` is the default of ``graftkit run digits``: all 1,797 images, about 80 s of CPU
time on one thread. ``digits-smoke`` is the CI size (19 s of CPU time): it checks that every
step runs and is too short to learn. Both keep graftkit's curriculum, losses and evaluation;
they only shrink sizes and set K = 4 zones of 2 rows each.
"""

from __future__ import annotations

from graftkit.config import Profile


def _phase(n: int, **fields) -> dict:
    return {f"phases.p{n}.{k}": v for k, v in fields.items()}


TINY = {
    "bridge.compressor": "digits-rows",
    "bridge.num_zones": 4,
    "bridge.num_heads": 4,
    "bridge.xattn_heads": 4,
    "bridge.jepa_dim": 32,
    "bridge.whitening_components": 32,
    "model.prior.hidden_size": 64,
    "model.prior.intermediate_size": 128,
    "model.prior.num_hidden_layers": 4,
    "model.prior.max_length": 96,
    "model.prior.steps": 300,
    "model.lora.r": 8,
    "model.lora.alpha": 16,
    "eval.batch_size": 120,
    "eval.monitor_subset": 60,
    "eval.generation.max_new_tokens": 64,
    **_phase(1, epochs=4, batch_size=64, lr=2e-3),
    **_phase(2, epochs=3, batch_size=128, lr=5e-4),
    **_phase(3, epochs=6, batch_size=32, lr=2e-3, **{"callbacks.freeze_lora.after_epoch": 4}),
    **_phase(4, epochs=1, batch_size=32, lr=1e-4),
}

SMOKE = {
    **TINY,
    "data.synth": {"encoder": {"epochs": 5}},
    "data.limit_train": 240,
    "data.limit_valid": 60,
    "model.prior.steps": 60,
    "model.prior.num_hidden_layers": 2,
    "eval.batch_size": 60,
    "eval.monitor_subset": 20,
    "eval.generation.max_new_tokens": 48,
    "eval.probe_folds": 2,
    **_phase(1, epochs=1),
    **_phase(2, epochs=1),
    **_phase(3, epochs=2, **{"callbacks.freeze_lora.after_epoch": 1}),
    **_phase(4, epochs=1),
}

PROFILES = [
    Profile(
        name="digits-tiny",
        description="digits default: 1,797 images, K=4, language prior; ~80 s of CPU on 1 thread",
        dataset="digits",
        overrides=TINY,
    ),
    Profile(
        name="digits-smoke",
        description="digits CI smoke: 240 train / 60 valid images, every step in ~30 s; learns nothing",
        dataset="digits",
        overrides=SMOKE,
    ),
]
