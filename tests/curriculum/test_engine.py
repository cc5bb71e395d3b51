"""The curriculum engine at tiny dimensions: what each phase trains, when LoRA
freezes, which state early stopping keeps, which text each phase reads.

One run of the CT-RATE ``smoke`` profile (48 synthetic volumes, a 2-layer language prior of
hidden size 32) is prepared once; every test starts from the same bridge state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import ClassVar

import pytest
import torch

from graftkit import plugins
from graftkit.checkpoint import is_complete, load_checkpoint
from graftkit.config import Profile, build_config
from graftkit.curriculum import batches
from graftkit.curriculum.callbacks import Callback
from graftkit.curriculum.engine import prepare_run, run_curriculum, run_phase
from graftkit.curriculum.phases import parse_phase_range
from graftkit.hookspecs import hookimpl
from graftkit.rundir import RunDir

pytestmark = pytest.mark.slow


def _config(**overrides):
    profile = plugins.get("profile", "smoke")
    return build_config("ct_rate", overrides={**profile.overrides, **overrides})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    run = prepare_run(_config(), tmp_path_factory.mktemp("engine") / "run", record=False)
    start = run.glm.bridge_state_dict()
    infonce = {k: v.clone() for k, v in run.objective.infonce.state_dict().items()}
    return run, start, infonce


@pytest.fixture
def run(prepared, tmp_path):
    """The prepared run, reset to its initial bridge, writing into a fresh folder."""
    base, start, infonce = prepared
    base.glm.load_bridge_state_dict(start)
    base.objective.infonce.load_state_dict(infonce)
    return dataclasses.replace(base, rundir=RunDir(tmp_path))


def _with(run, **overrides):
    """``run`` with its config overridden by dotted keys on top of the smoke profile."""
    return dataclasses.replace(run, cfg=_config(**overrides))


def _checksums(run) -> dict[str, str]:
    """sha256 of every parameter of each bridge group (the frozen LLM base under ``llm``)."""
    out = {}
    for group, params in run.glm.parameter_groups().items():
        digest = hashlib.sha256()
        for name in sorted(params):
            digest.update(params[name].detach().float().cpu().numpy().tobytes())
        out[group] = digest.hexdigest()
    base = hashlib.sha256()
    for name, p in sorted(run.glm.llm.named_parameters()):
        if "lora_" not in name:
            base.update(p.detach().float().cpu().numpy().tobytes())
    out["llm"] = base.hexdigest()
    return out


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {k for k in before if before[k] != after[k]}


def _epoch_states(run, monkeypatch) -> list[dict]:
    """Record the checksums and history row at the end of every epoch (before any best-state
    restore at the end of the phase)."""
    rows: list[dict] = []
    history = run.history

    def record(row):
        rows.append({"row": dict(row), "sums": _checksums(run)})
        history(row)

    monkeypatch.setattr(run, "history", record)
    return rows


# each phase's losses touch every group it declares trainable (phase 3 with the paper's losses)
PAPER_P3_LOSSES = {"lm": 1.0, "focal": 1.0, "jepa": 1.0, "llm_cls": 3.0}


@pytest.mark.parametrize(
    ("number", "overrides", "expected"),
    [
        (1, {}, {"compressor", "heads"}),
        (2, {}, {"compressor", "predictor", "calibrator", "heads"}),
        (
            3,
            # no recalibration: it sets the (frozen) calibrator from data, tested below
            {
                "phases.p3.losses": PAPER_P3_LOSSES,
                "phases.p3.epochs": 1,
                "phases.p3.callbacks.recalibrate": None,
            },
            {"predictor", "lora", "xattn", "projectors", "heads"},
        ),
        (4, {}, {"lora"}),
    ],
)
def test_each_phase_trains_exactly_its_declared_groups(run, number, overrides, expected):
    run = _with(run, **overrides)
    declared = set(run.cfg.phases.get(number).trainable)
    before = _checksums(run)
    run_phase(run, number)
    changed = _changed(before, _checksums(run))
    assert changed <= declared, changed - declared
    assert changed == expected
    assert "llm" not in changed


def test_phase_3_recalibrates_the_frozen_calibrator(run):
    before = _checksums(run)
    run_phase(_with(run, **{"phases.p3.epochs": 1}), 3)
    assert "calibrator" in _changed(before, _checksums(run))


def test_lora_freezes_at_the_declared_epoch(run, monkeypatch):
    run = _with(
        run,
        **{
            "phases.p3.epochs": 3,
            "phases.p3.callbacks.freeze_lora.after_epoch": 2,
            "phases.p3.losses": PAPER_P3_LOSSES,
        },
    )
    rows = _epoch_states(run, monkeypatch)
    before = _checksums(run)
    run_phase(run, 3)
    sums = [before] + [r["sums"] for r in rows]
    assert len(rows) == 3
    assert "lora" in _changed(sums[0], sums[1]) and "lora" in _changed(sums[1], sums[2])
    assert "lora" not in _changed(sums[2], sums[3])  # frozen from epoch 3
    assert "xattn" in _changed(sums[2], sums[3])  # the rest still trains


def test_early_stopping_restores_the_best_epoch(run, monkeypatch):
    # maximise the validation loss: the first epoch is best, training makes it worse
    run = _with(
        run,
        **{
            "phases.p1.epochs": 4,
            "phases.p1.lr": 0.03,
            "phases.p1.early_stopping": {"metric": "valid_total", "mode": "max", "patience": 2},
        },
    )
    rows = _epoch_states(run, monkeypatch)
    result = run_phase(run, 1)
    metrics = [r["row"]["valid_total"] for r in rows]
    best = max(range(len(metrics)), key=metrics.__getitem__)
    assert result["best"] == pytest.approx(metrics[best])
    assert len(rows) == best + 3 and result["stopped_early"]  # patience 2
    final = _checksums(run)
    assert final["compressor"] == rows[best]["sums"]["compressor"]
    assert final["compressor"] != rows[-1]["sums"]["compressor"]


@pytest.mark.parametrize(
    ("number", "kind"), [(2, None), (3, "canonical_findings"), (4, "summarised_narrative")]
)
def test_each_phase_gets_its_declared_text(run, monkeypatch, number, kind):
    seen: list[str] = []
    response_text = batches.response_text

    def record(dataset, volume, text_kind, rng):
        seen.append(text_kind)
        return response_text(dataset, volume, text_kind, rng)

    monkeypatch.setattr(batches, "response_text", record)
    captured = []
    forward = run.objective.forward

    def capture(batch):
        captured.append(batch)
        return forward(batch)

    monkeypatch.setattr(run.objective, "forward", capture)
    run = _with(run, **{f"phases.p{number}.epochs": 1})
    run_phase(run, number)
    assert seen and set(seen) == {kind} if kind else not seen
    if kind is None:  # phase 2: whitened positive-finding targets, no tokens
        assert all("text_emb" in b and "input_ids" not in b for b in captured)
    else:
        batch = captured[0]  # the first training batch
        want = response_text(run.dataset, run.train[int(batch["index"][0])], kind, None)
        labels = batch["labels_lm"][0]
        decoded = run.tokenizer.decode(labels[labels != -100], skip_special_tokens=True)
        assert want.split(".")[0].strip() in decoded


def _phase(name, trainable, losses, text, **extra):
    return {
        "name": name,
        "trainable": trainable,
        "losses": losses,
        "text": text,
        "epochs": 1,
        "batch_size": 16,
        "lr": 1e-3,
        **extra,
    }


ALIGN = _phase(
    "align",
    ["compressor", "heads"],
    {"bce": 1.0, "mil": 1.0},
    "conditions",
    callbacks={"init_compressor": {}, "phases_seen": {}},
)
CONTRAST = _phase("contrast", ["predictor", "heads"], {"infonce": 1.0}, "positive_findings")
GENERATE = _phase(
    "generate",
    ["lora", "xattn", "projectors"],
    {"lm": 1.0},
    "canonical_findings",
    epochs=2,
    callbacks={"freeze_lora": {"after_epoch": 1}, "phases_seen": {}},
)
NARRATE = _phase("narrate", ["lora"], {"lm": 1.0}, "narrative", callbacks={"ewc": {"lambda": 10.0}})


class _CurriculumPlugin:
    """A test plugin declaring a three- and a five-phase curriculum, and a callback that records
    which phases it ran in."""

    seen: ClassVar[list[int]] = []

    @hookimpl
    def register_callbacks(self, register):
        seen = self.seen

        class PhasesSeen(Callback):
            name = "phases_seen"

            def on_phase_begin(self, ctx):
                seen.append(ctx.number)

        register("phases_seen", PhasesSeen)

    @hookimpl
    def register_profiles(self, register):
        register(
            "three-phase",
            Profile(name="three-phase", overrides={"phases": [ALIGN, GENERATE, NARRATE]}),
        )
        five = [ALIGN, CONTRAST, GENERATE, dict(GENERATE, name="generate again"), NARRATE]
        register("five-phase", Profile(name="five-phase", overrides={"phases": five}))


@pytest.mark.parametrize(("profile", "count"), [("three-phase", 3), ("five-phase", 5)])
def test_a_plugin_curriculum_of_any_length_runs(run, profile, count):
    plugins.load_plugins()
    plugins.pm.register(_CurriculumPlugin(), name="test-curricula")
    try:
        _CurriculumPlugin.seen.clear()
        run = _with(run, **plugins.get("profile", profile).overrides)
        assert len(run.cfg.phases) == count
        results = run_curriculum(run, parse_phase_range(f"1-{count}", count))
    finally:
        plugins.pm.unregister(name="test-curricula")
    assert sorted(results, key=int) == [str(n) for n in range(1, count + 1)]
    rows = [json.loads(line) for line in (run.run_dir / "history.jsonl").read_text().splitlines()]
    epochs = [p.epochs for p in run.cfg.phases]
    assert [r["phase"] for r in rows] == [n for n, e in enumerate(epochs, 1) for _ in range(e)]
    for n in range(1, count + 1):
        assert is_complete(run.run_dir / f"phase{n}")
    generate = [n for n, p in enumerate(run.cfg.phases, 1) if p.name.startswith("generate")]
    assert _CurriculumPlugin.seen == [1, *generate]
    narrate = load_checkpoint(run.run_dir / f"phase{count}")[0]
    assert "ewc" in narrate  # the EWC anchor of the last phase is kept with it


@pytest.mark.parametrize(("grad", "scale"), [(1e-6, 30.0), (1e3, 1.0), (0.5, None)])
def test_lars_projector_scale_stays_in_bounds_and_lasts_one_step(grad, scale):
    from types import SimpleNamespace

    from graftkit.curriculum.callbacks import LarsProjectorLR

    w = torch.nn.Parameter(torch.full((4, 4), 0.5))  # ‖w‖ = 2
    other = torch.nn.Parameter(torch.ones(2))
    w.grad = torch.full((4, 4), grad / 4)  # ‖∇w‖ = grad
    other.grad = torch.ones(2)
    optimizer = torch.optim.SGD(
        [{"params": [w], "lr": 0.1, "group": "projectors"}, {"params": [other], "lr": 0.1}]
    )
    lars = LarsProjectorLR(min=1.0, max=30.0)
    ctx = SimpleNamespace(optimizer=optimizer)
    lars.on_before_optimizer_step(ctx)
    want = scale if scale is not None else 2 / grad
    assert 1.0 <= lars.last_scale <= 30.0
    assert lars.last_scale == pytest.approx(want)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * want)
    assert optimizer.param_groups[1]["lr"] == 0.1  # only the projectors
    optimizer.step()
    lars.on_after_optimizer_step(ctx)
    assert optimizer.param_groups[0]["lr"] == 0.1


def test_paper_phase_3_keeps_the_lars_scale_in_bounds(run, monkeypatch):
    from graftkit.curriculum import callbacks

    scales = []
    lars_scale = callbacks.lars_scale

    def record(params, low, high):
        scales.append(lars_scale(params, low, high))
        return scales[-1]

    monkeypatch.setattr(callbacks, "lars_scale", record)
    run = _with(
        run,
        **{
            "phases.p3.epochs": 1,
            "phases.p3.losses": PAPER_P3_LOSSES,
            "phases.p3.callbacks.lars_projector_lr": {"min": 1.0, "max": 30.0},
        },
    )
    run_phase(run, 3)
    assert len(scales) == 3 and all(1.0 <= s <= 30.0 for s in scales)  # 48 volumes / 16


def test_a_step_budget_runs_as_many_steps_whatever_the_cohort(run, monkeypatch):
    """``steps``: the phase runs ceil(steps / steps per epoch) epochs and its cosine schedule
    spans them, so halving the cohort doubles the epochs instead of halving the training."""
    from graftkit.curriculum.trainer import phase_epochs

    p1 = run.cfg.phases.get(1)  # smoke: batch 16
    assert phase_epochs(p1, 3) == p1.epochs  # no budget: the declared epochs
    budget = p1.model_copy(update={"steps": 7})
    assert [phase_epochs(budget, n) for n in (1, 3, 7, 8)] == [7, 3, 1, 1]
    for volumes, epochs in ((48, 3), (24, 4)):  # 3 and 2 steps an epoch
        small = dataclasses.replace(
            _with(run, **{"phases.p1.steps": 7, "phases.p1.epochs": 1}), train=run.train[:volumes]
        )
        rows = _epoch_states(small, monkeypatch)
        run_phase(small, 1)
        assert [r["row"]["epoch"] for r in rows] == list(range(1, epochs + 1))
        assert rows[-1]["row"]["lr"] < 0.05 * small.cfg.phases.get(1).lr  # the cosine ran out
