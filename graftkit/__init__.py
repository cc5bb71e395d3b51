"""graftkit: graft a frozen self-supervised encoder into a pre-trained decoder LLM."""

__version__ = "0.1.0"
