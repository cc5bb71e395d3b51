"""The paper's phase-4 comparison (Section III-C4, Table III) on a finished run.

From one run of the whole curriculum (``graftkit run ct_rate --phases 1-4 --output-dir RUN``)
this evaluates its phase-3 checkpoint (``graftkit eval RUN --checkpoint phase3 --name phase3``)
and runs phase 4 again from that checkpoint twice, each with one mechanism removed, on the same
volumes:

- **freeze + EWC**: the run's own phase 4 (the recipe as configured: LoRA only, the
  cross-attention adapters and layer projectors frozen, the L2-SP anchor on);
- **no freezing**: ``phases.p4.trainable`` gains ``xattn`` and ``projectors`` (EWC still on,
  anchoring the LoRA weights as before);
- **no EWC**: ``phases.p4.callbacks.ewc`` off, freezing kept.

Each row gives macro F1, CRG, ROUGE-L, zero-drop (the share of F1 that zeroed visual tokens
remove) and mean words, and each variant is compared with the run's phase 4 by
:func:`graftkit.eval.compare.compare_evaluations` (paired bootstrap interval and permutation
p-value on the same volumes). The variants are ordinary ``graftkit run`` calls, printed as they
start, so any row can be repeated by hand::

    python -m benchmarks.phase4_comparison --run RUN --output RUN/phase4-comparison

writes ``RUN/phase4-comparison/phase4_comparison.{md,json}`` (docs/benchmarks.md, "Phase 4: what
freezing and EWC buy").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

VARIANTS: dict[str, list[str]] = {
    "no freezing": ["--set", "phases.p4.trainable=[lora,xattn,projectors]"],
    "no EWC": ["--set", "phases.p4.callbacks.ewc=null"],
}


def _graftkit(*args: str, threads: int | None) -> None:
    command = [sys.executable, "-m", "graftkit", "--quiet"]
    if threads:
        command += ["--threads", str(threads)]
    command += list(args)
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True, env=os.environ.copy())


def row(folder: Path) -> dict[str, Any]:
    """The comparison's figures of one evaluation folder."""
    metrics = json.loads((folder / "metrics.json").read_text())
    words = [
        len(json.loads(line)["generated"].split())
        for line in (folder / "generations.jsonl").read_text().splitlines()
    ]
    return {
        "folder": str(folder),
        "macro_f1": metrics["eval"]["macro_f1"],
        "crg": metrics["eval"]["crg"],
        "rouge_l": (metrics.get("nlg") or {}).get("rouge_l"),
        "zero_drop": metrics["ablation"]["zero_drop"],
        "zero": metrics["ablation"]["zero"]["macro_f1"],
        "mean_words": sum(words) / len(words),
    }


def compare(run: Path, output: Path, threads: int | None = 1) -> dict[str, Any]:
    """Run the comparison (module docstring) and write its table under ``output``."""
    from graftkit.eval.compare import compare_evaluations

    output.mkdir(parents=True, exist_ok=True)
    phase3 = run / "eval" / "phase3"
    if not (phase3 / "metrics.json").is_file():
        _graftkit("eval", str(run), "--checkpoint", "phase3", "--name", "phase3", threads=threads)
    folders = {"phase 3 (start)": phase3, "freeze + EWC (the run's phase 4)": run}
    for name, flags in VARIANTS.items():
        target = output / name.replace(" ", "-")
        if not (target / "metrics.json").is_file():
            _graftkit(
                "run",
                "ct_rate",
                "--config",
                str(run / "config.yaml"),
                "--phases",
                "4",
                "--init-from",
                str(run / "phase3"),
                "--output-dir",
                str(target),
                *flags,
                threads=threads,
            )
        folders[name] = target
    rows = {name: row(folder) for name, folder in folders.items()}
    for name in VARIANTS:
        rows[name]["vs_run"] = compare_evaluations(folders[name], run)["metrics"]
    result = {"run": str(run), "rows": rows}
    (output / "phase4_comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    (output / "phase4_comparison.md").write_text("\n".join(format_table(result)) + "\n")
    return result


def format_table(result: dict[str, Any]) -> list[str]:
    """The markdown table docs/benchmarks.md quotes."""
    lines = [
        "| phase 4 | macro F1 | CRG | ROUGE-L | zero-drop | mean words | "
        "macro F1 vs the run's phase 4 (95 % CI, p) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["rows"].items():
        versus = ""
        if "vs_run" in r:
            c = r["vs_run"]["macro_f1"]
            versus = (
                f"{c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}], p {c['p_value']:.3f}"
            )
        rouge = "n/a" if r["rouge_l"] is None else f"{r['rouge_l']:.3f}"
        lines.append(
            f"| {name} | {r['macro_f1']:.3f} | {r['crg']:.3f} | {rouge} | "
            f"{100 * r['zero_drop']:.1f} % | {r['mean_words']:.0f} | {versus} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished phases 1-4 run")
    parser.add_argument("--output", type=Path, help="default RUN/phase4-comparison")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per graftkit call")
    args = parser.parse_args(argv)
    result = compare(args.run, args.output or args.run / "phase4-comparison", args.threads)
    print("\n".join(format_table(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
