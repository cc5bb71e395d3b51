"""The examples' tests import the digits plugin from examples/plugin_digits when it is not installed."""

import importlib.util
import sys
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[2] / "examples" / "plugin_digits"

if importlib.util.find_spec("graftkit_digits") is None:
    sys.path.insert(0, str(PLUGIN))
