"""The bridge heads of each phase checkpoint of a run, on each checkpoint's tokens.

Why a ladder's ``bridge head`` row can sit far below the zone MIL probe of the same compressor:
for every phase checkpoint N of RUN, the ``cls`` and ``MIL`` heads of that checkpoint are scored
on the validation volumes at threshold 0.5 and at per-class thresholds chosen on the training
volumes, beside a zone MIL probe fitted afresh on the checkpoint's calibrated tokens
(:func:`graftkit.eval.probe.mil_probe`), and the heads' tensors are compared with phase 1's. The
measured table is in docs/evaluation.md, "The bridge heads' rows".

Run: ``python -m benchmarks.heads_by_phase RUN [--output heads.json]`` (about 2 min for the
default run on one core).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from graftkit.checkpoint import load_checkpoint
from graftkit.curriculum.engine import open_run
from graftkit.eval.generation import label_matrix, visual_tokens
from graftkit.eval.metrics import multilabel_scores, optimise_thresholds
from graftkit.eval.probe import mil_probe
from graftkit.rundir import RunDir


def _scores(glm, head: str, train_tokens, valid_tokens, y_train, y_valid) -> dict[str, float]:
    with torch.inference_mode():
        p_train, p_valid = (
            torch.sigmoid(getattr(glm.heads, head)(t).float()).numpy()
            for t in (train_tokens, valid_tokens)
        )
    thresholds, _ = optimise_thresholds(y_train, p_train, upper_bound=False)
    return {
        "threshold_0.5": multilabel_scores(y_valid, (p_valid >= 0.5).astype(int))["macro_f1"],
        "thresholds_from_train": multilabel_scores(y_valid, (p_valid >= thresholds).astype(int))[
            "macro_f1"
        ],
        "mean_probability_negative_cells": float(p_valid[y_valid == 0].mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    rundir = RunDir(args.run)
    phases = rundir.complete_phases()
    run = open_run(rundir, rundir.phase(phases[-1]))
    glm, batch = run.glm, run.cfg.eval.batch_size
    y_train, y_valid = label_matrix(run.train), label_matrix(run.valid)
    states = {n: load_checkpoint(rundir.phase(n))[0]["model"] for n in phases}
    first = {k: v for k, v in states[phases[0]].items() if k.startswith("heads.")}
    out = {}
    for n in phases:
        glm.load_bridge_state_dict(states[n])
        train_tokens = visual_tokens(glm, run.dataset, run.train, batch)
        valid_tokens = visual_tokens(glm, run.dataset, run.valid, batch)
        row = {
            head: _scores(glm, head, train_tokens, valid_tokens, y_train, y_valid)
            for head in ("cls", "mil")
        }
        row["heads_equal_phase_" + str(phases[0])] = all(
            torch.equal(v, states[n][k]) for k, v in first.items()
        )
        row["fresh_zone_mil_probe"] = mil_probe(train_tokens, y_train, valid_tokens, y_valid)[
            "macro_f1"
        ]
        out[f"phase{n}"] = row
        print(f"phase {n}: {json.dumps(row)}", flush=True)
    if args.output:
        args.output.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
