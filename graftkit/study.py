"""``graftkit study``: the paper's key comparisons on one cohort, written up as markdown.

Three comparisons, all from the same phase-2 checkpoint (phases 1-2 run once):

1. phase 3 on raw narratives vs positive-findings-only text (paper Table II): per-epoch
   generation F1 -- does it collapse after a few epochs?
2. cold vs warm bridge (paper Table VI): phase 3 from the phase-2 checkpoint alone, vs with the
   layer projectors, cross-attention adapters and LoRA of the first phase-3 run loaded on top;
   epoch-1 and best generation F1;
3. cross-attention skipped during decoding (the paper's 2.5x bug) vs running on every step,
   evaluated on the positive-findings phase-3 model.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

from graftkit.config import RunConfig
from graftkit.io import atomic_write_text


def _phase3(
    run, label: str, text: str, start_state: dict, warm: dict | None = None
) -> list[dict[str, Any]]:
    """Phase 3 of the run's curriculum with its text set to ``text``, from ``start_state`` (and
    the ``warm`` projectors, adapters and LoRA), in its own folder; returns its history rows."""
    from graftkit.config import PhasesConfig
    from graftkit.curriculum.engine import run_phase
    from graftkit.rundir import RunDir

    phases = list(run.cfg.phases)
    phases[2] = phases[2].model_copy(update={"text": text})
    sub = dataclasses.replace(
        run,
        rundir=RunDir(run.run_dir / label),
        cfg=run.cfg.model_copy(update={"phases": PhasesConfig(phases)}),
    )
    sub.run_dir.mkdir(parents=True, exist_ok=True)
    run.glm.load_bridge_state_dict(start_state)
    if warm is not None:
        run.glm.load_bridge_state_dict(warm, groups=["projectors", "xattn", "lora"])
    run_phase(sub, 3)
    return sub.rundir.history_rows()


def _generation(run, skip_decode: bool) -> tuple[dict[str, Any], Any, list[str]]:
    """The validation reports with the adapters on every decode step or skipped after the
    prompt: their label scores (macro, micro and weighted F1, CRG), extracted labels and texts."""
    from graftkit.eval.generation import (
        generate_reports,
        generation_settings,
        label_matrix,
        label_scores,
        visual_tokens,
    )
    from graftkit.labels import evaluation_extractor

    volumes = run.valid
    tokens = visual_tokens(
        run.glm, run.dataset, volumes, run.cfg.eval.batch_size, run.cfg.data.max_slices
    )
    gen = generation_settings(run.cfg.eval.generation)
    gen["xattn_on_decode"] = not skip_decode
    texts = generate_reports(
        run.glm,
        run.tokenizer,
        run.prompt,
        tokens,
        gen,
        run.cfg.eval.batch_size,
        seed=run.cfg.seed,
    )
    extractor = evaluation_extractor(run.cfg.eval, run.dataset)
    predicted = extractor.extract(texts)
    return label_scores(label_matrix(volumes), predicted, run.dataset.class_names), predicted, texts


def _decoding_comparison(run) -> dict[str, Any]:
    """Cross-attention on every decode step vs skipped, on the validation volumes: per variant
    the label scores and ROUGE-L, the trivial baselines and the skill, and a paired comparison
    (macro F1, CRG, ROUGE-L differences with a permutation p-value), as ``graftkit eval`` and
    ``graftkit compare`` report them."""
    from graftkit.eval.evaluate import oracle_on, trivial_baselines
    from graftkit.eval.generation import label_matrix
    from graftkit.eval.metrics import skill_score
    from graftkit.eval.nlg import rouge_l_per_report
    from graftkit.eval.stats import compare_systems

    truth = label_matrix(run.valid)
    references = [run.dataset.narrative_text(v) for v in run.valid]
    baselines = trivial_baselines(truth, label_matrix(run.train))
    oracle_f1, _ = oracle_on(run.dataset, run.valid)
    out: dict[str, Any] = {"baselines": baselines}
    predictions, rouge = {}, {}
    for name, skip in (("every_step", False), ("skipped", True)):
        scores, predictions[name], texts = _generation(run, skip_decode=skip)
        rouge[name] = rouge_l_per_report(texts, references)
        out[name] = {
            **{k: scores[k] for k in ("macro_f1", "micro_f1", "weighted_f1", "crg")},
            "rouge_l": float(rouge[name].mean()),
            "skill": skill_score(
                scores["macro_f1"], baselines["all_positive"]["macro_f1"], oracle_f1
            )
            if oracle_f1 is not None
            else None,
        }
    out["every_step_minus_skipped"] = compare_systems(
        truth,
        predictions["every_step"],
        predictions["skipped"],
        rouge["every_step"],
        rouge["skipped"],
        seed=run.cfg.seed,
    )
    return out


def _cell(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def run_study(cfg: RunConfig, output: Path, run_dir: Path | None = None) -> dict[str, Any]:
    """Run the three comparisons and write ``output`` (markdown) plus a JSON beside it."""
    from graftkit.curriculum.engine import prepare_run, run_curriculum

    started = time.time()
    run_dir = run_dir or Path("runs") / f"study-{cfg.dataset}-{cfg.profile or 'default'}"
    run = prepare_run(cfg.model_copy(update={"output_dir": run_dir}), run_dir)
    run_curriculum(run, [1, 2], resume=True)
    p2 = {k: v.clone() for k, v in run.glm.bridge_state_dict().items()}

    positive = _phase3(run, "p3-positive", "positive_findings", p2)
    trained = {k: v.clone() for k, v in run.glm.bridge_state_dict().items()}
    narrative = _phase3(run, "p3-narrative", "narrative", p2)
    warm = _phase3(run, "p3-warm", "positive_findings", p2, warm=trained)

    run.glm.load_bridge_state_dict(trained)
    decoding = _decoding_comparison(run)
    every_step = decoding["every_step"]["macro_f1"]
    skipped = decoding["skipped"]["macro_f1"]

    def f1s(rows):
        return [round(r["gen_f1"], 3) for r in rows]

    def crgs(rows):
        return [
            None if r.get("gen_crg_real") is None else round(r["gen_crg_real"], 3) for r in rows
        ]

    result = {
        "positive_findings": f1s(positive),
        "narrative": f1s(narrative),
        "cold": {"epoch1": f1s(positive)[0], "best": max(f1s(positive))},
        "warm": {"epoch1": f1s(warm)[0], "best": max(f1s(warm))},
        "positive_findings_crg": crgs(positive),
        "narrative_crg": crgs(narrative),
        "xattn_every_step": every_step,
        "xattn_skipped_in_decoding": skipped,
        "decoding": decoding,
        "minutes": round((time.time() - started) / 60, 1),
    }
    epochs = max(len(positive), len(narrative))

    def _per_epoch(rows):
        return " | ".join(
            f"{f1:.3f} ({_cell(crg)})" for f1, crg in zip(f1s(rows), crgs(rows), strict=True)
        )

    command = (
        " ".join(["graftkit", *sys.argv[1:]]) if sys.argv[1:2] else f"graftkit study {cfg.dataset}"
    )
    lines = [
        "# Reproduction study on the synthetic cohort",
        "",
        f"Command: `{command}` — machine: {platform.machine()} CPU, {platform.node() and 'this workplace'}; "
        f"date {date.today().isoformat()}; {result['minutes']} minutes.",
        "Generation macro F1 and CRG on the validation volumes, rule-based labels of the "
        "generated text (docs/evaluation.md).",
        "Numbers are whatever the run produced; the synthetic cohort is not CT-RATE.",
        "",
        "## Table II analogue: phase-3 text (generation F1 per epoch, CRG in brackets)",
        "",
        "| phase-3 text | " + " | ".join(f"ep {i + 1}" for i in range(epochs)) + " |",
        "|---|" + "---|" * epochs,
        "| positive findings only | " + _per_epoch(positive) + " |",
        "| raw narrative | " + _per_epoch(narrative) + " |",
        "",
        "## Table VI analogue: cold vs warm bridge",
        "",
        "| bridge | epoch-1 F1 | best F1 |",
        "|---|---|---|",
        f"| cold (phase-2 checkpoint only) | {result['cold']['epoch1']} | {result['cold']['best']} |",
        f"| warm (projectors, adapters, LoRA from a prior phase-3 run) | {result['warm']['epoch1']} | {result['warm']['best']} |",
        "",
        "## Cross-attention during decoding",
        "",
        "| adapters | macro F1 | micro F1 | weighted F1 | CRG | ROUGE-L | skill |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {label} | "
            + " | ".join(
                _cell(decoding[key][m])
                for m in ("macro_f1", "micro_f1", "weighted_f1", "crg", "rouge_l", "skill")
            )
            + " |"
            for key, label in (
                ("every_step", "run on every decode step"),
                ("skipped", "skipped during decoding (prompt only)"),
            )
        ],
        "",
        "Baselines on the same volumes: every finding named macro F1 "
        f"{_cell(decoding['baselines']['all_positive']['macro_f1'])} (CRG "
        f"{_cell(decoding['baselines']['all_positive']['crg'])}), findings at training "
        f"prevalence {_cell(decoding['baselines']['prevalence']['macro_f1'])} (CRG "
        f"{_cell(decoding['baselines']['prevalence']['crg'])}); skill = (F1 - every-finding F1) / "
        "(oracle F1 - every-finding F1).",
        "",
        "Every step minus skipped, paired on the same volumes (bootstrap 95 % interval, "
        "permutation p-value): "
        + "; ".join(
            f"{name} {c['difference']:+.3f} [{_cell(c['low'])}, {_cell(c['high'])}], "
            f"p = {c['p_value']:.4f}"
            for name, c in decoding["every_step_minus_skipped"].items()
        )
        + ".",
        "",
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, "\n".join(lines))
    atomic_write_text(output.with_suffix(".json"), json.dumps(result, indent=2))
    print("\n".join(lines))
    return result
