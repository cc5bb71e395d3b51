import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test uses a private graftkit cache unless it sets one itself."""
    if "GRAFTKIT_CACHE" not in os.environ:
        monkeypatch.setenv("GRAFTKIT_CACHE", str(tmp_path_factory.getbasetemp() / "graftkit-cache"))
