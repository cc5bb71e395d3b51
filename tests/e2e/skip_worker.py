"""Phase 1 of the smoke profile (batch 8: 3 steps per process on 2 processes) where every volume
of process 1's second batch fails at load; the main process writes the names of those volumes
and the metrics to ``argv[1]`` as JSON.

The files are damaged after the data scan, as a file changed during a run would be: process 1
points its own copies of those volumes at NaN-filled copies of their embedding files, so the
shared cohort stays intact and no other process loads them.
"""

import json
import sys
from pathlib import Path

import numpy as np
from accelerate.utils import gather_object

from graftkit import plugins
from graftkit.config import build_config
from graftkit.curriculum.engine import prepare_run, run_curriculum
from graftkit.curriculum.trainer import phase_loader

out, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
overrides = {**plugins.get("profile", "smoke").overrides, "phases.p1.batch_size": 8}
cfg = build_config("ct_rate", overrides=overrides)
run = prepare_run(cfg, run_dir)
acc = run.accelerator
damaged = []
if acc.process_index == 1:
    loader = phase_loader(run, 1, "train", 0, shuffle=True)
    for index in loader.dataset.indices[8:16]:
        volume = run.train[index]
        source = Path(volume.meta["embedding"])
        copy = run_dir.parent / "damaged" / source.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        np.save(copy, np.full_like(np.load(source), np.nan))
        volume.meta["embedding"] = str(copy)
        damaged.append(volume.name)
damaged = gather_object(damaged)
run_curriculum(run, [1])
if run.main:
    metrics = run.rundir.read_metrics()
    out.write_text(json.dumps({"processes": acc.num_processes, "damaged": damaged, **metrics}))

# let gloo free its last collective's work before exit (see tests/align/infonce_ddp_worker.py)
run.accelerator.wait_for_everyone()
run.accelerator.end_training()
