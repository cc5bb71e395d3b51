"""What the phases of one run share (:class:`Run`) and what a callback sees of its phase
(:class:`PhaseContext`). Both are built whole: a run by :func:`graftkit.curriculum.engine.prepare_run`,
a phase's context by :class:`graftkit.curriculum.trainer.PhaseTrainer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graftkit.progress import is_quiet
from graftkit.rundir import RunDir

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from graftkit.config import PhaseConfig, RunConfig
    from graftkit.curriculum.batches import TextTargets
    from graftkit.curriculum.objective import Objective
    from graftkit.curriculum.textspace import TextSpace
    from graftkit.data import GraftDataset, Volume
    from graftkit.lm.chat import ChatPrompt


def echo(accelerator: Accelerator, message: str) -> None:
    """Print ``message`` once (the main process), unless ``--quiet``."""
    if accelerator.is_main_process and not is_quiet():
        print(message, flush=True)


@dataclass
class Run:
    """Everything the phases of one run share. Nothing is added to it once built: phase state
    lives in the phase's trainer and callbacks."""

    cfg: RunConfig
    rundir: RunDir
    accelerator: Accelerator
    dataset: GraftDataset
    train: list[Volume]
    valid: list[Volume]
    glm: Any
    tokenizer: Any
    textspace: TextSpace
    objective: Objective
    targets: dict[str, TextTargets]
    llm_path: Path
    #: what the run reports about itself: data summary, LLM, text space, inventory, checkpoint
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        """The run folder's path (:attr:`rundir` owns what is in it)."""
        return self.rundir.path

    @property
    def prompt(self) -> ChatPrompt:
        """The run's chat prompt: the dataset's instruction, rendered with ``model.chat``."""
        from graftkit.lm.chat import ChatPrompt

        chat = self.cfg.model.chat
        return ChatPrompt(self.dataset.prompt, system=chat.system, date_string=chat.date_string)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def echo(self, message: str) -> None:
        echo(self.accelerator, message)

    def history(self, row: dict[str, Any]) -> None:
        """Record one epoch's row in ``history.jsonl`` (and TensorBoard when installed)."""
        if self.main:
            self.rundir.append_history(row)
        if self.accelerator.trackers:
            numbers = {
                f"phase{row['phase']}/{k}": v for k, v in row.items() if isinstance(v, int | float)
            }
            self.accelerator.log(numbers, step=int(row["phase"]) * 1000 + int(row["epoch"]))

    def update_metrics(self, update: dict[str, Any]) -> None:
        """Merge ``update`` into ``RUN/metrics.json`` (the main process writes)."""
        if self.main:
            self.rundir.update_metrics(update)

    def load(self, checkpoint: Path, groups: list[str] | None = None) -> list[str]:
        """Load a phase checkpoint's bridge tensors (optionally only some groups) into the model;
        returns the names loaded."""
        from graftkit.checkpoint import CheckpointError, load_checkpoint

        checkpoint = Path(checkpoint)
        tensors, _ = load_checkpoint(checkpoint)
        try:
            return self.glm.load_bridge_state_dict(tensors["model"], groups=groups)
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(
                f"checkpoint {checkpoint} does not fit this model (different architecture?): {err}"
            ) from None


@dataclass(frozen=True)
class PhaseContext:
    """What a callback sees of the phase it runs in (read-only)."""

    run: Run
    number: int
    config: PhaseConfig
    #: the phase's (prepared) optimiser; ``None`` in ``on_phase_begin``, which runs before it is
    #: built from what the callbacks leave trainable
    optimizer: torch.optim.Optimizer | None = None
    #: resuming from this phase's own epoch checkpoint (``RUN/checkpoints/phase{N}/last``)
    resumed: bool = False
    #: the bridge is still as built: nothing was loaded into it and this phase never ran
    fresh_bridge: bool = False
    #: ``--warm-bridge PATH`` of the invocation, if any
    warm_bridge: Path | None = None

    def echo(self, message: str) -> None:
        self.run.echo(message)
