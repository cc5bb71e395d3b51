"""Label extractors: report text -> multi-label 0/1 vectors (the evaluation's measuring stick)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np


class LabelExtractor(ABC):
    """Maps report texts to ``[n, C]`` int arrays over ``class_names``.

    Subclasses registered through ``register_label_extractors`` are built with keyword options
    (e.g. ``weights=PATH``) from the CLI or the run config.
    """

    name: ClassVar[str] = ""
    class_names: ClassVar[list[str]] = []

    def __init__(self, **options):
        self.options = options

    @abstractmethod
    def extract(self, texts: Sequence[str]) -> np.ndarray:
        """Return an ``int64`` array ``[len(texts), len(class_names)]`` of 0/1 labels."""

    def sentence_labels(self, sentence: str) -> set[int]:
        """Classes that one sentence asserts as present (used by positive-findings text builders)."""
        return {int(i) for i in np.flatnonzero(self.extract([sentence])[0])}


def evaluation_extractor(eval_config, dataset, name: str | None = None) -> LabelExtractor:
    """The label extractor an evaluation scores generated text with: ``name`` if given, else
    ``eval.extractor``, else the dataset's ``default_extractor``; built with the dataset's own
    options for it (:meth:`~graftkit.data.GraftDataset.extractor_options`, e.g. the class names
    of data whose classes are its columns) updated by ``eval.extractor_options`` (e.g.
    ``model_dir`` of ``ct_rate-radbert``).

    The one place this choice is made, for the final evaluation, the per-epoch monitor and the
    study alike.
    """
    from graftkit import plugins

    chosen = name or eval_config.extractor or dataset.default_extractor
    options = {**dataset.extractor_options(chosen), **eval_config.extractor_options}
    return plugins.get("extractor", chosen)(**options)
