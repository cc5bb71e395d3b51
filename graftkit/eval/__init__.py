"""Evaluation: generation metrics, ablations, linear probe, collapse monitor, run report."""
