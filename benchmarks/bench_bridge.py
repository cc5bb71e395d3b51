"""Benchmark of the bridge: zone compressor, grafted generation, grafted vs prefix tokens.

    python benchmarks/bench_bridge.py            # full: paper sizes (~2 min on 2 CPU cores)
    python benchmarks/bench_bridge.py --quick    # small sizes, a few seconds

1. ``ZoneCompressor`` forward+backward at paper size (B=8, N uniform in 20..600 with one item at
   600, d=1024, 16 heads, K=32, one global layer) against (a) the per-zone loop reference
   (``zone_loop_reference``: Python loops over items and zones, same weights) and (b) the bare
   matrix multiplications the compressor performs (same shapes, same FLOPs, no masking,
   normalisation or bookkeeping). Targets: >= 2x faster than (a), <= 1.5x the time of (b).
2. Generation time per token, grafted (LoRA merged, 3 adapters, 32 visual tokens in the prompt)
   vs the same base model, KV cache on, greedy, batch 1 and 8, 64 new tokens. Target <= 1.10x.
3. The grafted model with 32 visual tokens vs the base model given all 600 slice embeddings as
   prefix embeddings (a LLaVA-style projector), 64 new tokens: speed ratio and the ratio of the
   memory that grows with the prompt (KV cache, plus the adapters' visual K/V for the graft).

Timings interleave the compared variants and keep the best of the repeats (the machine is shared).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import statistics
import time
from collections.abc import Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from graftkit.bridge import GraftConfig, ZoneCompressor, graft, zone_loop_reference

SLICES_MAX = 600
K = 32


def _best(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: bool = True
) -> dict[str, float]:
    """Best CPU time (s) of each function over ``repeats`` interleaved rounds (after a warm-up).

    Process CPU time with one torch thread: on a shared machine wall time measures the neighbours.
    """
    for fn in fns.values() if warmup else ():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - start)
    return best


# -- 1. zone compressor ------------------------------------------------------------------------
def _bare_matmuls(comp: ZoneCompressor, slices: torch.Tensor, mask: torch.Tensor):
    """The compressor's matrix multiplications with the same shapes, as plain autograd matmuls."""
    b, n, d = slices.shape
    h, hd, k = comp.num_heads, d // comp.num_heads, comp.num_zones
    ff = comp.config.ff_mult * d
    x = slices[mask]
    shapes = {
        "q": (d, d),
        "kv": (d, 2 * d),
        "o": (d, d),
        "qkv": (d, 3 * d),
        "go": (d, d),
        "f1": (d, ff),
        "f2": (ff, d),
    }
    leaves = {name: (torch.randn(*shape) * 0.02).requires_grad_() for name, shape in shapes.items()}
    queries = torch.randn(k, d, requires_grad=True)
    layers = len(comp.global_layers)

    def step() -> None:
        for leaf in (*leaves.values(), queries):
            leaf.grad = None
        kv = x @ leaves["kv"]
        kv = kv.new_zeros(b, n, 2 * d).masked_scatter(mask.unsqueeze(-1), kv)
        key, value = kv.view(b, n, 2, h, hd).permute(2, 0, 3, 1, 4)
        q = (queries @ leaves["q"]).view(1, k, h, hd).transpose(1, 2)
        scores = q @ key.transpose(-1, -2)
        tokens = (scores @ value).transpose(1, 2).reshape(b * k, d) @ leaves["o"]
        for _ in range(layers):
            qg, kg, vg = (tokens @ leaves["qkv"]).view(b, k, 3, h, hd).permute(2, 0, 3, 1, 4)
            mixed = ((qg @ kg.transpose(-1, -2)) @ vg).transpose(1, 2).reshape(b * k, d)
            tokens = mixed @ leaves["go"]
            tokens = (tokens @ leaves["f1"]) @ leaves["f2"]
        tokens.square().mean().backward()

    return step


def bench_compressor(quick: bool) -> list[dict]:
    torch.manual_seed(0)
    b, dim, heads, n_max = (2, 256, 4, 150) if quick else (8, 1024, 16, SLICES_MAX)
    comp = ZoneCompressor(dim, num_zones=K, num_heads=heads, num_global_layers=1, dropout=0.0)
    lengths = torch.randint(20, n_max + 1, (b,))
    lengths[0] = n_max
    slices = torch.randn(b, n_max, dim)
    mask = torch.arange(n_max) < lengths.unsqueeze(1)
    z = torch.arange(n_max, dtype=torch.float32).expand(b, -1) * 1.5

    def batched() -> None:
        comp.zero_grad(set_to_none=True)
        comp(slices, z, mask).square().mean().backward()

    def loop() -> None:
        comp.zero_grad(set_to_none=True)
        zone_loop_reference(comp, slices, z, mask).square().mean().backward()

    times = _best(
        {"batched": batched, "loop": loop, "bare": _bare_matmuls(comp, slices, mask)},
        repeats=1 if quick else 2,
    )
    shape = (
        f"B={b} N=20..{n_max} (mean {float(lengths.float().mean()):.0f}) d={dim} H={heads} K={K}"
    )
    return [
        {
            "benchmark": "compressor fwd+bwd",
            "setting": shape,
            "batched_ms": round(times["batched"] * 1e3, 1),
            "loop_ms": round(times["loop"] * 1e3, 1),
            "bare_matmul_ms": round(times["bare"] * 1e3, 1),
            "speedup_vs_loop": round(times["loop"] / times["batched"], 2),
            "ratio_vs_bare": round(times["batched"] / times["bare"], 2),
            "target": "speedup >= 2, ratio <= 1.5",
        }
    ]


# -- 2./3. generation --------------------------------------------------------------------------
def _llama(quick: bool) -> LlamaForCausalLM:
    if quick:
        sizes = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, vocab_size=2048)
    else:
        sizes = dict(
            hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, vocab_size=32000
        )
    config = LlamaConfig(
        **sizes,
        num_attention_heads=16 if not quick else 4,
        num_key_value_heads=4 if not quick else 2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _cache_bytes(cache) -> int:
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def _paired(
    first: Callable[[], object], second: Callable[[], object], rounds: int
) -> list[tuple[float, float]]:
    """CPU seconds of ``first`` and ``second`` run back to back, ``rounds`` times (after a short
    warm-up of each); the median of the per-round ratios resists the neighbours' load."""
    first(), second()
    out = []
    for _ in range(rounds):
        t0 = time.process_time()
        first()
        t1 = time.process_time()
        second()
        out.append((t1 - t0, time.process_time() - t1))
    return out


@torch.no_grad()
def _adapter_step_cost(g, batch: int, iterations: int = 200) -> float:
    """CPU seconds the adapters add to one decode step (all layers; visual K/V already cached)."""
    visual = torch.randn(batch, K, g.hidden_size)
    kvs = [
        (g.xattn[str(i)], g.xattn[str(i)].visual_kv(g.projectors[str(i)](visual)))
        for i in g.xattn_layers
    ]
    hidden = torch.randn(batch, 1, g.hidden_size)
    start = time.process_time()
    for _ in range(iterations):
        for adapter, kv in kvs:
            adapter(hidden, kv)
    return (time.process_time() - start) / iterations


def bench_generation(quick: bool) -> list[dict]:
    base = _llama(quick)
    plain = copy.deepcopy(base)
    dim = 64 if quick else 1024
    g = graft(
        base,
        GraftConfig(visual_dim=dim, num_zones=K, num_heads=4 if quick else 16, lora={"r": 16}),
        compressor=None,
    ).eval()
    with torch.no_grad():
        for adapter in g.xattn.values():
            adapter.gate.fill_(0.5)  # active adapters: a closed gate would still cost the same
    g.merge_lora()
    new_tokens = 16 if quick else 64
    text = 16
    rows = []
    torch.manual_seed(1)
    for batch in (1, 8):
        visual = torch.randn(batch, K, g.hidden_size)
        grafted_ids = torch.cat(
            [torch.full((batch, K), g.visual_token_id), torch.randint(3, 100, (batch, text))], dim=1
        )
        plain_ids = torch.randint(3, 100, (batch, K + text))
        kw = dict(
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
        )
        plain_run = lambda ids=plain_ids, kw=kw: plain.generate(input_ids=ids, **kw)  # noqa: E731
        grafted_run = lambda ids=grafted_ids, v=visual, kw=kw: g.generate(v, input_ids=ids, **kw)  # noqa: E731
        pairs = _paired(plain_run, grafted_run, rounds=1 if quick or batch > 1 else 4)
        plain_s = statistics.median(p for p, _ in pairs)
        grafted_s = statistics.median(q for _, q in pairs)
        adapters_s = _adapter_step_cost(g, batch)
        rows.append(
            {
                "benchmark": "generation per token",
                "setting": f"batch {batch}, prompt {K + text}, {new_tokens} new, "
                f"{len(g.xattn_layers)} adapters, LoRA merged, {len(pairs)} paired round(s)",
                "plain_ms_per_token": round(plain_s / new_tokens * 1e3, 2),
                "grafted_ms_per_token": round(grafted_s / new_tokens * 1e3, 2),
                "ratio": round(statistics.median(q / p for p, q in pairs), 3),
                "adapters_ms_per_step": round(adapters_s * 1e3, 3),
                "adapters_share": round(adapters_s / (plain_s / new_tokens), 4),
                "target": "ratio <= 1.10",
            }
        )

    # 32 grafted tokens vs all slices as prefix embeddings
    slices_n = 100 if quick else SLICES_MAX
    batch = 1
    prefix = torch.randn(batch, slices_n, g.hidden_size) * 0.02
    text_ids = torch.randint(3, 100, (batch, text))
    prefix_embeds = torch.cat([prefix, plain.get_input_embeddings()(text_ids)], dim=1).detach()
    visual = torch.randn(batch, K, g.hidden_size)
    grafted_ids = torch.cat([torch.full((batch, K), g.visual_token_id), text_ids], dim=1)
    kw = dict(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
        return_dict_in_generate=True,
    )
    outputs: dict[str, object] = {}

    def run_prefix() -> None:
        outputs["prefix"] = plain.generate(inputs_embeds=prefix_embeds, **kw)

    def run_grafted() -> None:
        outputs["grafted"] = g.generate(visual, input_ids=grafted_ids, **kw)

    times = _best({"prefix": run_prefix, "grafted": run_grafted}, repeats=1, warmup=False)
    cache = {
        name: _cache_bytes(getattr(out, "past_key_values", None) or getattr(out, "cache", None))
        for name, out in outputs.items()
    }
    adapter_kv = len(g.xattn_layers) * 2 * batch * K * g.hidden_size * 4
    rows.append(
        {
            "benchmark": "32 grafted tokens vs slice prefix",
            "setting": f"batch {batch}, {slices_n} prefix embeddings vs {K} grafted tokens, "
            f"+{text} text, {new_tokens} new",
            "prefix_s": round(times["prefix"], 3),
            "grafted_s": round(times["grafted"], 3),
            "speed_ratio": round(times["prefix"] / times["grafted"], 2),
            "prefix_cache_MB": round(cache["prefix"] / 2**20, 2),
            "grafted_cache_MB": round((cache["grafted"] + adapter_kv) / 2**20, 2),
            "memory_ratio": round(cache["prefix"] / (cache["grafted"] + adapter_kv), 2),
            "target": "report",
        }
    )
    return rows


def run(quick: bool = False, threads: int = 1) -> list[dict]:
    """All bridge benchmarks; one dict per measured row (CPU seconds with ``threads`` threads)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = bench_compressor(quick) + bench_generation(quick)
    finally:
        torch.set_num_threads(previous)
    for row in rows:
        row.update(
            machine=f"{platform.machine()} {platform.processor() or 'cpu'}, {threads} torch threads",
            date=datetime.date.today().isoformat(),
            quick=quick,
        )
    return rows


def _table(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        fields = {
            k: v for k, v in row.items() if k not in ("benchmark", "machine", "date", "quick")
        }
        lines.append(f"{row['benchmark']}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    results = run(args.quick, args.threads)
    print(_table(results))
    print(f"machine: {results[0]['machine']}; date: {results[0]['date']}")
