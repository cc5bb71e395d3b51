"""Scaling with the number of slices N: compressor time (linear) vs LLM generation time (constant).

    python -m benchmarks --only scaling [--quick] [--plots docs/img]

1. ``ZoneCompressor`` forward+backward (B = 4, d_v = 1,024, 16 heads, K = 32, every item N
   slices) for N from 32 to 1,200: the zone attention reads every slice once, so time should grow
   linearly in N (a least-squares line and its R² are reported).
2. Per volume (batch 1), with a small Llama-architecture LLM: the bridge's encode (compressor +
   predictor forward), grafted generation (32 visual tokens + 16 text tokens, 32 new tokens,
   KV cache), and, for contrast, the same LLM given all N slice embeddings as prefix tokens (a
   LLaVA-style projector). The grafted LLM always sees 32 visual tokens, so its time should not
   depend on N; the prefix's does.

CPU seconds of one torch thread, best of 2 (compressor) or 3 rounds over every N (generation)\n(see :mod:`benchmarks`). ``--quick`` sizes are
dominated by per-call overhead, so their targets are not checked. ``plots`` writes
``scaling_compressor.png`` and ``scaling_generation.png`` (matplotlib, Agg).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from benchmarks import best_times, row, torch_threads
from benchmarks.gpu_paper_scale import llama_config
from benchmarks.step_time import SMALL_LLM
from graftkit.bridge import GraftConfig, ZoneCompressor, graft

K = 32
FULL = {
    "batch": 4,
    "dim": 1024,
    "heads": 16,
    "slices": [32, 100, 200, 400, 600, 800, 1200],
    "new_tokens": 32,
    "rounds": 3,
}
QUICK = {"batch": 2, "dim": 64, "heads": 4, "slices": [16, 64, 256], "new_tokens": 4, "rounds": 1}
TEXT_TOKENS = 16


def linear_fit(x: list[float], y: list[float]) -> dict[str, float]:
    """Least-squares ``y = a + b x``: intercept, slope and R²."""
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(xs, ys, 1)
    residual = ys - (intercept + slope * xs)
    total = ((ys - ys.mean()) ** 2).sum()
    return {
        "intercept": float(intercept),
        "slope": float(slope),
        "r2": float(1 - (residual**2).sum() / total) if total > 0 else 1.0,
    }


def compressor_curve(sizes: dict) -> dict[str, list[float]]:
    torch.manual_seed(0)
    comp = ZoneCompressor(
        sizes["dim"], num_zones=K, num_heads=sizes["heads"], num_global_layers=1, dropout=0.0
    )
    seconds = []
    for n in sizes["slices"]:
        slices = torch.randn(sizes["batch"], n, sizes["dim"])
        z = torch.arange(n, dtype=torch.float32).expand(sizes["batch"], -1) * 1.5
        mask = torch.ones(sizes["batch"], n, dtype=torch.bool)

        def step(slices=slices, z=z, mask=mask) -> None:
            comp.zero_grad(set_to_none=True)
            comp(slices, z, mask).square().mean().backward()

        seconds.append(best_times({"step": step}, repeats=2)["step"])
    return {"slices": list(sizes["slices"]), "seconds": seconds}


def generation_curve(sizes: dict, quick: bool) -> dict[str, list[float]]:
    config = llama_config(tiny=True, overrides=None if quick else SMALL_LLM)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    plain.load_state_dict(base.state_dict())
    glm = graft(
        base,
        GraftConfig(visual_dim=sizes["dim"], num_zones=K, num_heads=sizes["heads"], lora=None),
    ).eval()
    with torch.no_grad():
        for adapter in glm.xattn.values():
            adapter.gate.fill_(0.5)
    text = torch.randint(3, 100, (1, TEXT_TOKENS))
    ids = torch.cat([torch.full((1, K), glm.visual_token_id), text], dim=1)
    kwargs = dict(
        max_new_tokens=sizes["new_tokens"],
        min_new_tokens=sizes["new_tokens"],
        do_sample=False,
        pad_token_id=0,
    )
    text_embeds = plain.get_input_embeddings()(text).detach()
    cases = {}
    for n in sizes["slices"]:
        slices = torch.randn(1, n, sizes["dim"])
        z = torch.arange(n, dtype=torch.float32)[None] * 1.5
        mask = torch.ones(1, n, dtype=torch.bool)
        with torch.no_grad():
            visual = glm.encode(slices, z, mask)[1]
        prefix = torch.cat([torch.randn(1, n, config.hidden_size) * 0.02, text_embeds], 1)
        cases[n] = {
            "encode": lambda s=slices, z=z, m=mask: glm.encode(s, z, m),
            "grafted": lambda v=visual: glm.generate(v, input_ids=ids, **kwargs),
            "prefix": lambda p=prefix: plain.generate(inputs_embeds=p, **kwargs),
        }
    # Rounds run over every N in turn, so a change of machine load cannot bend the curve.
    best = {(n, name): float("inf") for n in cases for name in cases[n]}
    with torch.no_grad():
        for fn in cases[sizes["slices"][0]].values():
            fn()  # warm-up
        for _ in range(sizes["rounds"]):
            for n, fns in cases.items():
                for name, seconds in best_times(fns, repeats=1, warmup=False).items():
                    best[n, name] = min(best[n, name], seconds)
    out: dict = {"slices": list(cases), "new_tokens": sizes["new_tokens"]}
    for name in ("encode", "grafted", "prefix"):
        out[name] = [best[n, name] for n in cases]
    return out


def plot(compressor: dict, generation: dict, folder: Path) -> list[Path]:
    """Two PNGs: compressor time vs N with its fitted line; per-volume times vs N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fit = linear_fit(compressor["slices"], compressor["seconds"])
    xs = np.asarray(compressor["slices"], float)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.plot(xs, compressor["seconds"], "o", label="measured")
    ax.plot(
        xs,
        fit["intercept"] + fit["slope"] * xs,
        "-",
        label=f"linear fit: {1e3 * fit['slope']:.2f} ms/slice, R² = {fit['r2']:.3f}",
    )
    ax.set_xlabel("slices per volume N")
    ax.set_ylabel("forward + backward, CPU s (1 thread)")
    ax.set_title("ZoneCompressor, B = 4, d_v = 1024, K = 32, 16 heads")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths = [folder / "scaling_compressor.png"]
    fig.savefig(paths[0])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ns = generation["slices"]
    ax.plot(ns, generation["prefix"], "s-", label="LLM with N slice embeddings as prefix")
    ax.plot(ns, generation["grafted"], "o-", label="grafted LLM (32 visual tokens)")
    ax.plot(ns, generation["encode"], "^-", label="bridge encode (compressor + predictor)")
    ax.set_xlabel("slices per volume N")
    ax.set_ylabel("CPU s per volume (1 thread)")
    ax.set_title(f"Generation of {generation['new_tokens']} tokens, batch 1, small Llama")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(folder / "scaling_generation.png")
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def run(quick: bool = False, plots: Path | None = None, threads: int = 1) -> list[dict]:
    """Both curves as table rows; with ``plots`` also the two PNGs."""
    sizes = QUICK if quick else FULL
    with torch_threads(threads):
        compressor = compressor_curve(sizes)
        generation = generation_curve(sizes, quick)
    if plots is not None:
        plot(compressor, generation, Path(plots))
    fit = linear_fit(compressor["slices"], compressor["seconds"])
    lo, hi = sizes["slices"][0], sizes["slices"][-1]
    ms = {n: round(1e3 * t, 1) for n, t in zip(compressor["slices"], compressor["seconds"])}
    rows = [
        row(
            "scaling: compressor fwd+bwd vs N",
            f"B={sizes['batch']} d={sizes['dim']} H={sizes['heads']} K={K}, N={lo}..{hi}, "
            f"CPU 1 thread; ms per N: {ms}",
            {
                "ms_per_slice": round(1e3 * fit["slope"], 3),
                "intercept_ms": round(1e3 * fit["intercept"], 1),
                "r2": round(fit["r2"], 4),
            },
            target="linear in N (R² >= 0.98)",
            met=None if quick else fit["r2"] >= 0.98,
        )
    ]
    grafted, prefix = generation["grafted"], generation["prefix"]
    rows.append(
        row(
            "scaling: generation vs N",
            f"batch 1, {sizes['new_tokens']} new tokens, N={lo}..{hi}, CPU 1 thread",
            {
                "grafted_s_at_min_max": [round(grafted[0], 3), round(grafted[-1], 3)],
                "grafted_max_over_min": round(grafted[-1] / grafted[0], 2),
                "prefix_max_over_min": round(prefix[-1] / prefix[0], 2),
                "encode_s_at_min_max": [
                    round(generation["encode"][0], 4),
                    round(generation["encode"][-1], 4),
                ],
            },
            target="grafted constant in N (max/min <= 1.2)",
            met=None if quick else grafted[-1] / grafted[0] <= 1.2,
        )
    )
    return rows
