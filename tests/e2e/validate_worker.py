"""Validation losses of the untrained smoke-profile model in this process group (torchrun or
plain python); the main process writes them to ``argv[1]`` as JSON."""

import json
import os
import sys
from pathlib import Path

from graftkit import plugins
from graftkit.config import build_config
from graftkit.curriculum.engine import prepare_run
from graftkit.curriculum.trainer import PhaseTrainer

out, root = Path(sys.argv[1]), Path(sys.argv[2])
cfg = build_config("ct_rate", overrides=dict(plugins.get("profile", "smoke").overrides))
# one folder per process: each fits the (deterministic) text space itself, no shared files
run = prepare_run(cfg, root / f"rank{os.environ.get('RANK', '0')}", record=False)
row = PhaseTrainer(run, 2).validate()  # phase 2: InfoNCE + MMD
if run.main:
    out.write_text(json.dumps({"processes": run.accelerator.num_processes, **row}))

# let gloo free its last collective's work before exit (see tests/align/infonce_ddp_worker.py)
run.accelerator.wait_for_everyone()
run.accelerator.end_training()
