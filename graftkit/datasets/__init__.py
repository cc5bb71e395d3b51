"""Datasets the core ships, registered by :mod:`graftkit.builtin` like any plugin's.

- :mod:`graftkit.datasets.hf`: ``hf``, any Hugging Face ``datasets`` dataset on local disk with
  an embeddings column, a report column and label columns (docs/plugins.md, "The built-in `hf`
  dataset").
- :mod:`graftkit.datasets.keywords`: ``hf-keywords``, the label extractor derived from the label
  columns' names.
- :mod:`graftkit.datasets.profiles`: ``hf-tiny`` and ``hf-smoke``.

Only :mod:`~graftkit.datasets.hf` imports torch and ``datasets``; the other two are light, so
that ``graftkit plugins`` and ``graftkit label`` load neither.
"""
