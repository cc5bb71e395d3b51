"""The collapse monitor as a phase callback: the one place the curriculum uses ``graftkit.eval``.

Each epoch it generates reports for a fixed validation subset with real and zeroed visual tokens
(greedy), scores them with the run's label extractor and feeds the F1 pair to
:class:`graftkit.eval.collapse.CollapseMonitor` (docs/design.md, "Evaluation": reliance on the visual
tokens). It adds ``gen_f1_real``, ``gen_f1_zero`` and ``gen_f1`` (= real) to the epoch's row,
which a phase may early-stop on, and the CRG score beside them (``gen_crg_real``,
``gen_crg_zero``; None where the subset has no positive label). A decoder that does not read the
tokens yet gets one note per phase rather than a warning every epoch
(:mod:`graftkit.eval.collapse`).
"""

from __future__ import annotations

from typing import Any

from graftkit.curriculum.callbacks import Callback, PhaseContext
from graftkit.eval.collapse import CollapseMonitor as _Collapse
from graftkit.eval.generation import (
    ablate,
    generate_reports,
    generation_scores,
    generation_settings,
    visual_tokens,
)
from graftkit.labels import evaluation_extractor


class CollapseMonitor(Callback):
    """Generation F1 with real and zeroed tokens on ``subset`` validation volumes (default
    ``eval.monitor_subset``), with collapse warnings in ``RUN/collapse.jsonl``."""

    name = "collapse_monitor"

    def __init__(self, subset: int | None = None):
        self.subset = subset
        self._extractor: Any = None
        self._monitor: _Collapse | None = None

    def on_phase_begin(self, ctx: PhaseContext) -> None:
        run = ctx.run
        self._extractor = evaluation_extractor(run.cfg.eval, run.dataset)
        floor = run.cfg.eval.reliance_floor
        path = run.rundir.collapse
        self._monitor = (
            _Collapse.from_jsonl(path, reliance_floor=floor)
            if path.is_file()
            else _Collapse(reliance_floor=floor)
        )

    def on_evaluate(self, ctx: PhaseContext, epoch: int, row: dict[str, Any]) -> None:
        run = ctx.run
        subset = run.valid[: self.subset or run.cfg.eval.monitor_subset]
        with run.accelerator.autocast():
            tokens = visual_tokens(
                run.glm, run.dataset, subset, run.cfg.eval.batch_size, run.cfg.data.max_slices
            )
            gen = generation_settings(run.cfg.eval.generation, greedy=True)
            f1, crg = {}, {}
            for mode in ("real", "zero"):
                texts = generate_reports(
                    run.glm,
                    run.tokenizer,
                    run.prompt,
                    ablate(tokens, mode),
                    gen,
                    run.cfg.eval.batch_size,
                )
                scores = generation_scores(self._extractor, texts, subset, run.dataset.class_names)
                f1[mode], crg[mode] = scores["macro_f1"], scores["crg"]
        row.update(gen_f1_real=f1["real"], gen_f1_zero=f1["zero"], gen_f1=f1["real"])
        row.update(gen_crg_real=crg["real"], gen_crg_zero=crg["zero"])
        # rows a process wrote past its last epoch checkpoint before it ended (killed, disk
        # full): the resumed run trains those epochs again, and their rows replace them
        self._monitor.history = [
            r
            for r in self._monitor.history
            if not (r["phase"] == ctx.number and r["epoch"] >= row["epoch"])
        ]
        # printed once, by the main process, rather than also logged by every process
        warnings = self._monitor.update(
            ctx.number, row["epoch"], f1["real"], f1["zero"], log_warnings=False
        )
        for message in [*self._monitor.history[-1]["notes"], *warnings]:
            ctx.echo(f"[collapse monitor] {message}")
        if run.main:
            self._monitor.to_jsonl(run.rundir.collapse)
