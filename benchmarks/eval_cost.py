"""What the field's metrics add to an evaluation: each one timed on a finished evaluation.

From RUN/generations.jsonl (the generated and reference reports, labels and extracted labels) and
the run's training labels, times (one thread, wall clock) BLEU-1..4, ROUGE-L, CIDEr-D, METEOR
(the JVM's start and its scoring apart), micro / weighted F1 and CRG, the two baselines (the
prevalence one an exact expectation) and the bootstrap intervals, as ``graftkit eval`` computes
them (docs/benchmarks.md, "Evaluation on every process").

Run: ``python -m benchmarks.eval_cost RUN [--output cost.json]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from graftkit.eval import nlg
from graftkit.eval.compare import load_evaluation
from graftkit.eval.generation import label_scores
from graftkit.eval.metrics import all_positive_baseline, prevalence_baseline
from graftkit.eval.stats import label_intervals


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, round(time.perf_counter() - start, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="an evaluation folder (generations.jsonl)")
    parser.add_argument(
        "--train-prevalence",
        type=Path,
        help="metrics.json whose 'prevalence' holds the training prevalences (default RUN's)",
    )
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    ev = load_evaluation(args.run)
    prevalence_file = args.train_prevalence or args.run / "metrics.json"
    prevalence = json.loads(prevalence_file.read_text()).get("prevalence")
    seconds = {}
    _, seconds["label scores (macro / micro / weighted F1, CRG)"] = _timed(
        lambda: label_scores(ev.truth, ev.predicted, ev.classes)
    )
    _, seconds["baseline: all-positive report"] = _timed(lambda: all_positive_baseline(ev.truth))
    if prevalence:
        p = np.array([prevalence[c] for c in ev.classes])
        _, seconds["baseline: prevalence report (exact expectation)"] = _timed(
            lambda: prevalence_baseline(ev.truth, p)
        )
    _, seconds["BLEU-1..4"] = _timed(lambda: nlg.bleu(ev.generated, ev.references))
    rouge, seconds["ROUGE-L"] = _timed(lambda: nlg.rouge_l_per_report(ev.generated, ev.references))
    _, seconds["CIDEr-D"] = _timed(lambda: nlg.cider(ev.generated, ev.references))
    _, seconds["bootstrap intervals (1,000 resamples)"] = _timed(
        lambda: label_intervals(ev.truth, ev.predicted, rouge)
    )
    if nlg.java_available():
        scorer, seconds["METEOR: JVM start (returns at once)"] = _timed(nlg.MeteorScorer)
        _, seconds["METEOR: scoring, paraphrase table loading included"] = _timed(
            lambda: scorer.score(ev.generated, ev.references)
        )
        scorer.close()
    result = {"reports": len(ev.names), "seconds": seconds}
    for name, value in seconds.items():
        print(f"{name:<55} {value:8.3f} s")
    if args.output:
        args.output.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
