"""One-command GPU smoke of the engine: phases 1-4 and evaluation of the ``smoke`` profile.

    python -m benchmarks.gpu_smoke                      # one CUDA GPU, bf16 autocast, < 5 min
    python -m benchmarks.gpu_smoke --cpu --output x.json # the same run on the CPU (CI), float32

It is ``graftkit run ct_rate --profile smoke`` through the engine's own functions
(:func:`graftkit.curriculum.engine.prepare_run`, ``run_curriculum``, then
:func:`graftkit.run_eval.evaluate_run`), with
``model.dtype=bfloat16`` and ``launch.mixed_precision=bf16`` on CUDA, and it checks what
the engine's placement promises:

- every parameter of the grafted model and every tensor of every training and validation batch
  reaches the model on the accelerator's device;
- the bridge's trained weights stay float32 under bf16 autocast (docs/distributed.md);
- the training loss decreases over phase 3's two epochs;

then prints the median step time, the peak GPU memory and the evaluation's macro F1 as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _tensors(tree: Any):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _tensors(v)
    elif isinstance(tree, list | tuple):
        for v in tree:
            yield from _tensors(v)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(cpu: bool = False, run_dir: Path | None = None) -> dict[str, Any]:
    """Run the smoke profile end to end with the placement checks; returns the figures."""
    from graftkit import plugins
    from graftkit.config.layers import resolve_config
    from graftkit.curriculum.engine import prepare_run, run_curriculum
    from graftkit.run_eval import evaluate_run

    if not cpu and not torch.cuda.is_available():
        raise RuntimeError("gpu_smoke: no CUDA device; use --cpu to run the same checks on the CPU")
    overrides = [] if cpu else ["model.dtype=bfloat16", "launch.mixed_precision=bf16"]
    if cpu:
        os.environ["ACCELERATE_USE_CPU"] = "true"
    cfg, _ = resolve_config("ct_rate", profile="smoke", overrides=overrides)
    plugins.load_plugins()
    started = time.perf_counter()
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="gpu-smoke-")) / "run"
    cfg = cfg.model_copy(update={"output_dir": run_dir})
    run = prepare_run(cfg, run_dir)
    device = run.accelerator.device
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "mixed_precision": run.accelerator.mixed_precision,
        "llm_dtype": str(run.glm.llm.get_input_embeddings().weight.dtype).removeprefix("torch."),
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    off_device: list[str] = []
    step_times: list[float] = []
    forward = run.objective.forward
    last = {"t": None}

    def checked_forward(batch):
        misplaced = [t.device for t in _tensors(batch) if t.device != device]
        if misplaced:
            off_device.append(f"a batch tensor on {misplaced[0]}")
        if run.objective.training:  # one call per training step: time step to step
            _sync(device)
            now = time.perf_counter()
            if last["t"] is not None:
                step_times.append(now - last["t"])
            last["t"] = now
        return forward(batch)

    run.objective.forward = checked_forward
    try:
        phases = list(run.cfg.phases.numbers)
        run_curriculum(run, phases)
    finally:
        del run.objective.forward
    off_device += [
        f"parameter {name} on {p.device}"
        for name, p in run.objective.named_parameters()
        if p.device != device
    ]
    bridge_dtypes = {
        str(p.dtype).removeprefix("torch.")
        for group, params in run.glm.parameter_groups().items()
        for p in params.values()
    }
    metrics = evaluate_run(run)
    rows = run.rundir.history_rows()
    p3 = [r["train_total"] for r in rows if r["phase"] == 3]
    result.update(
        {
            "phases": phases,
            "bridge_dtypes": sorted(bridge_dtypes),
            "phase3_train_total": p3,
            "step_s_median": statistics.median(step_times) if step_times else None,
            "steps": len(step_times) + 1,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
            if device.type == "cuda"
            else None,
            "macro_f1": metrics["eval"]["macro_f1"],
            "total_s": round(time.perf_counter() - started, 1),
            "off_device": off_device[:5],
            "run_dir": str(run_dir),
        }
    )
    problems = []
    if off_device:
        problems.append(f"{len(off_device)} tensor(s) off {device}: {off_device[:3]}")
    if run.accelerator.mixed_precision != "no" and bridge_dtypes != {"float32"}:
        problems.append(f"bridge weights in {sorted(bridge_dtypes)} under autocast, want float32")
    if not (len(p3) >= 2 and p3[-1] < p3[0]):
        problems.append(f"phase-3 training loss did not decrease: {p3}")
    result["problems"] = problems
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU in float32 (CI)")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument("--run-dir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)
    result = run(cpu=args.cpu, run_dir=args.run_dir)
    text = json.dumps(result, indent=1)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)
    if result["problems"]:
        print("gpu_smoke: FAILED: " + "; ".join(result["problems"]), file=sys.stderr)
        return 1
    print(
        f"gpu_smoke: ok on {result['device']}: step {result['step_s_median']:.4f} s (median), "
        f"peak memory {result['peak_memory_gib'] or 0:.2f} GiB, {result['total_s']} s in all"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
