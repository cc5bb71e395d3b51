"""Tests of the encoders plugin (graftkit_encoders) and the embedding runner (graftkit.embed)."""
