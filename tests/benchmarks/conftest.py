"""Put the repository root first on ``sys.path``: ``benchmarks`` is a top-level folder of the
repository, not an installed package, and this test folder shares its name."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
