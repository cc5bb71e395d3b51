"""``python -m benchmarks [--quick] [--only NAME[,NAME]] [--json PATH] [--plots DIR]``: one table.

Suites, in order (``--only`` takes these names):

- ``bridge``: zone compressor vs per-zone loop and vs bare matmuls, grafted vs plain generation
  per token, 32 grafted tokens vs a 600-slice prefix (``benchmarks/bench_bridge.py``);
- ``step_time``: phase-3 step time, bridge share vs LLM share (:mod:`benchmarks.step_time`);
- ``data_loading``: loader samples/s from ``.npy`` and Arrow, 0/2 workers, vs 10x the step's rate
  (:mod:`benchmarks.data_loading`);
- ``gpu_paper_scale``: the paper-scale GPU script, tiny config when there is no GPU or with
  ``--quick`` (:mod:`benchmarks.gpu_paper_scale`);
- ``scaling``: compressor time and generation time vs N (:mod:`benchmarks.scaling`);
- ``encoders``: slice-embedding rate of the ViT-L/14 encoder and the readers
  (``benchmarks/bench_encoders.py``). Its own quick mode times a full-size ViT-L batch
  (minutes on a small CPU), so ``--quick`` here times a 2-layer, 64-wide encoder of the same code
  instead.

``--quick`` runs everything at tiny sizes in well under a minute (CI: tests/benchmarks). Full
results, with the command, machine and date: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks import machine, row, today

SUITES = ["bridge", "step_time", "data_loading", "gpu_paper_scale", "scaling", "encoders"]
_META = {"benchmark", "setting", "target", "met", "estimate", "machine", "date", "quick", "suite"}


def normalise(rows: list[dict]) -> list[dict]:
    """Rows of any suite in this package's format: ``results`` gathers the measured fields.

    ``bench_bridge`` rows hold their figures as top-level keys; ``bench_encoders`` rows hold
    ``value``/``unit``/``note`` and name estimates ``ESTIMATE: ...``.
    """
    out = []
    for r in rows:
        if "results" in r:
            out.append(r)
            continue
        if "value" in r and "unit" in r:
            name = r["benchmark"]
            estimate = name.upper().startswith("ESTIMATE")
            if estimate:
                name = name.split(":", 1)[1].strip()
            value = r["value"]
            out.append(
                row(
                    name,
                    r.get("note", ""),
                    {r["unit"]: round(value, 3) if isinstance(value, float) else value},
                    estimate=estimate,
                )
            )
            continue
        results = {k: v for k, v in r.items() if k not in _META}
        target = r.get("target", "")
        out.append(
            row(r["benchmark"], r.get("setting", ""), results, "" if target == "report" else target)
        )
    return out


def _bridge(quick: bool, context: dict) -> list[dict]:
    try:
        module = importlib.import_module("benchmarks.bench_bridge")
    except ImportError as err:
        return [row("bridge", "benchmarks/bench_bridge.py not importable", {"skipped": str(err)})]
    if not hasattr(module, "run"):
        return [row("bridge", "benchmarks/bench_bridge.py has no run(quick)", {"skipped": True})]
    return module.run(quick)


def _step_time(quick: bool, context: dict) -> list[dict]:
    from benchmarks import step_time

    rows = step_time.run(quick)
    context["step_samples_per_s"] = rows[0]["results"]["samples_per_s"]
    return rows


def _data_loading(quick: bool, context: dict) -> list[dict]:
    from benchmarks import data_loading

    return data_loading.run(quick, step_samples_per_s=context.get("step_samples_per_s"))


def _gpu_paper_scale(quick: bool, context: dict) -> list[dict]:
    from benchmarks import gpu_paper_scale, torch_threads

    tiny = quick or not torch.cuda.is_available()
    # one CPU thread: on a shared CPU, threads contending for cores cost more than they add
    with torch_threads(1 if tiny else torch.get_num_threads()):
        result = gpu_paper_scale.run(tiny=tiny)
    rows = gpu_paper_scale.rows(result)
    if quick:
        return rows
    estimates = gpu_paper_scale.estimates(tiny=False)
    for gpu in gpu_paper_scale.PEAK_BF16_TFLOPS:
        est = estimates[gpu]
        rows.append(
            row(
                f"gpu_paper_scale: phase-3 training, Llama-3.2-3B on one {gpu}",
                f"FLOPs at {estimates['assumed_mfu']:.0%} MFU, batch 8, seq {estimates['seq_len']}",
                {
                    "samples_per_s": round(est["samples_per_s"], 1),
                    "step_s": round(est["step_s"], 3),
                    "step_TFLOP": round(est["step_tflop"], 1),
                    "decode_tok_s_bound_b1": round(est["decode_tokens_per_s_upper_bound_batch1"]),
                    "decode_tok_s_bound_b8": round(est["decode_tokens_per_s_upper_bound_batch8"]),
                },
                estimate=True,
            )
        )
    return rows


def _scaling(quick: bool, context: dict) -> list[dict]:
    from benchmarks import scaling

    return scaling.run(quick, plots=context.get("plots"))


def _encoders_tiny() -> list[dict]:
    """The encoder and reader path of ``bench_encoders`` at a tiny size (``--quick``)."""
    from graftkit_encoders.lejepa import LeJepaCTEncoder

    from benchmarks import bench_encoders

    size, batch = 56, 4
    encoder = LeJepaCTEncoder(
        allow_random_weights=True,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=size,
        batch_size=batch,
    )
    pixels = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(0))
    encoder.embed_slices(pixels)
    start = time.process_time()
    encoder.embed_slices(pixels)
    encoder_rate = batch / max(time.process_time() - start, 1e-9)
    with tempfile.TemporaryDirectory() as tmp:
        nifti, _ = bench_encoders.write_inputs(Path(tmp), n_nifti=8, n_dicom=2)
        seconds, n = bench_encoders.bench_reader(nifti, encoder.config)
    return [
        row(
            "embedding rate, tiny ViT (2 layers, d=64)",
            f"batch {batch}, {size}x{size}, fp32, CPU; quick stand-in for bench_encoders",
            {"slices_per_cpu_s": round(encoder_rate, 1)},
        ),
        row(
            "reader + preprocessing, NIfTI 512x512",
            f"{n} slices, tiny encoder config",
            {"slices_per_s": round(n / seconds, 1)},
        ),
    ]


def _encoders(quick: bool, context: dict) -> list[dict]:
    if quick:
        return _encoders_tiny()
    from benchmarks import bench_encoders

    return bench_encoders.run(quick=False)


RUNNERS: dict[str, Callable[[bool, dict], list[dict]]] = {
    "bridge": _bridge,
    "step_time": _step_time,
    "data_loading": _data_loading,
    "gpu_paper_scale": _gpu_paper_scale,
    "scaling": _scaling,
    "encoders": _encoders,
}


def _cell(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/")


def table(rows: list[dict]) -> str:
    """A Markdown table: suite, benchmark (ESTIMATE marked), setting, results, target, met."""
    lines = [
        "| suite | benchmark | setting | results | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = ("ESTIMATE: " if r.get("estimate") else "") + r["benchmark"]
        met = {True: "yes", False: "NO", None: ""}[r.get("met")]
        cells = [r["suite"], name, r["setting"], _cell(r["results"]), r.get("target", ""), met]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, < 1 minute in all")
    parser.add_argument(
        "--only", action="append", default=None, help=f"suite(s), comma-separated: {SUITES}"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument(
        "--plots", type=Path, default=None, help="write the scaling PNGs here (docs/img)"
    )
    args = parser.parse_args(argv)
    selected = SUITES
    if args.only:
        selected = [name.strip() for spec in args.only for name in spec.split(",") if name.strip()]
        unknown = [name for name in selected if name not in RUNNERS]
        if unknown:
            parser.error(f"--only: unknown suite(s) {unknown}; suites: {SUITES}")
    context: dict = {"plots": args.plots}
    rows: list[dict] = []
    failed = []
    started = time.perf_counter()
    for name in SUITES:
        if name not in selected:
            continue
        t0 = time.perf_counter()
        try:
            suite_rows = normalise(RUNNERS[name](args.quick, context))
        except Exception as err:  # one failing suite must not hide the others' results
            traceback.print_exc()
            failed.append(name)
            suite_rows = [row(name, "FAILED", {"error": f"{type(err).__name__}: {err}"})]
        for r in suite_rows:
            r["suite"] = name
        rows.extend(suite_rows)
        print(f"# {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(f"# {machine()}; {today()}; {'quick' if args.quick else 'full'} sizes")
    print(table(rows))
    print(f"# total {time.perf_counter() - started:.1f} s", file=sys.stderr)
    if args.json is not None:
        meta = {"machine": machine(), "date": today(), "quick": args.quick}
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=1, default=str) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
