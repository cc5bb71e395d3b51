"""Worker of the 2-process test: ``torchrun --nproc_per_node 2 embed_worker.py TMP``."""

import sys
from pathlib import Path

from graftkit_encoders.precomputed import PrecomputedEncoder

from graftkit.embed import dist_rank_world, run_embed


class RecordingEncoder(PrecomputedEncoder):
    def encode(self, path):
        rank, _ = dist_rank_world()
        with open(TMP / f"calls.{rank}", "a") as fh:
            fh.write(Path(path).name + "\n")
        return super().encode(path)


TMP = Path(sys.argv[1])
summary = run_embed(
    RecordingEncoder(expected_dim=8), RecordingEncoder.discover_inputs(TMP / "in"), TMP / "out"
)
rank, _ = dist_rank_world()
(TMP / f"summary.{rank}").write_text(
    " ".join(summary.ok) + "|" + " ".join(n for n, _ in summary.failed)
)
sys.exit(summary.exit_code)
