"""Fixtures of the hf dataset tests: the tables of :mod:`hf_tables`, saved once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from hf_tables import planted, save


@pytest.fixture(scope="session")
def saved(tmp_path_factory) -> Path:
    """The planted tables saved with ``save_to_disk`` as splits ``train`` and ``validation``."""
    train, valid = planted()
    return save(tmp_path_factory.mktemp("hf") / "saved", train=train, validation=valid)
