"""Evaluation's peak memory against the length of one reference report (the text budget).

    python -m benchmarks.text_budget [--lengths 2000,10000,50000] [--limit-gb 12] [--json PATH]

A smoke-sized cohort in CT-RATE's layout (``graftkit synth ct_rate``: 48/16 volumes, d = 16) is
trained once with the smoke profile (phases 1-4, no evaluation). Then, for each length L, the
Findings_EN of the first validation volume is replaced by its own text repeated to L characters
(real words, so the prior's tokenizer cuts them as it cuts reports) and ``graftkit eval RUN``
runs in a fresh process with the run's own settings (ablations on: the teacher-forced NLL on
the last phase's narrative reports, LLM-cls, zone grounding), each into ``RUN/eval/lenL``. The
figure is that process's peak resident memory (``ru_maxrss``) and wall time; ``texts_cut`` is
what the evaluation recorded in ``metrics.json`` (``eval.texts_cut``).

``--limit-gb`` caps each evaluation's address space (``RLIMIT_AS``), so that code without a text
budget fails with its allocation error instead of taking a shared machine's memory; such a
length is reported as failed, with the last line of its error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

SMOKE_COHORT = ["--n-train", "48", "--n-valid", "16", "--dim", "16", "--seed", "0"]

#: run in the child: graftkit's CLI under an address-space cap, then the peak RSS in bytes
_CHILD = """
import json, resource, sys
limit = int(sys.argv[1])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from graftkit.cli import main
code = main(sys.argv[3:])
with open(sys.argv[2], "w") as fh:
    json.dump({"code": code, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}, fh)
sys.exit(code)
"""


def _graftkit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "graftkit", "--quiet", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def measure(lengths: list[int], limit_gb: float, work: Path) -> list[dict[str, Any]]:
    env = {**os.environ, "GRAFTKIT_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    data, run = work / "cohort", work / "run"
    steps = [
        ("synth", ["synth", "ct_rate", "--output", str(data), *SMOKE_COHORT]),
        ("run", ["run", "ct_rate", "--profile", "smoke", "--data-dir", str(data),
                 "--output-dir", str(run), "--no-eval"]),
    ]  # fmt: skip
    for name, args in steps:
        done = _graftkit(*args, env=env)
        if done.returncode:
            raise RuntimeError(f"{name} failed: {done.stderr[-2000:]}")
    csv = data / "radiology_text_reports" / "validation_reports.csv"
    pristine = pd.read_csv(csv, keep_default_na=False)
    rows = []
    for length in lengths:
        frame = pristine.copy()
        text = frame.loc[0, "Findings_EN"]
        frame.loc[0, "Findings_EN"] = (text + " ") * (length // (len(text) + 1) + 1)
        frame.loc[0, "Findings_EN"] = frame.loc[0, "Findings_EN"][:length].strip()
        frame.to_csv(csv, index=False)
        out = work / f"rss-{length}.json"
        args = ["--quiet", "eval", str(run), "--name", f"len{length}"]
        start = time.perf_counter()
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, str(int(limit_gb * 2**30)), str(out), *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        seconds = time.perf_counter() - start
        row: dict[str, Any] = {"report_characters": length, "seconds": round(seconds, 1)}
        if child.returncode == 0:
            metrics = json.loads((run / "eval" / f"len{length}" / "metrics.json").read_text())
            row["peak_rss_gb"] = round(json.loads(out.read_text())["maxrss_kb"] / 2**20, 2)
            row["texts_cut"] = metrics["eval"].get("texts_cut", "(not recorded)")
        else:
            lines = [line for line in child.stderr.splitlines() if line.strip()]
            row["failed"] = lines[-1][:300] if lines else f"exit code {child.returncode}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    pristine.to_csv(csv, index=False)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="2000,10000,20000,50000")
    parser.add_argument("--limit-gb", type=float, default=12.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    lengths = [int(v) for v in args.lengths.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(lengths, args.limit_gb, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
