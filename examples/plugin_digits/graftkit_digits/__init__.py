"""graftkit plugin: handwritten digits as a second modality (rows as slices, written reports)."""

from __future__ import annotations

from functools import partial

from graftkit.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_datasets(register):
    from graftkit_digits.dataset import DigitsDataset

    register("digits", DigitsDataset)


@hookimpl
def register_encoders(register):
    from graftkit_digits.encoder import DigitRowEncoder

    register("digits-rows", DigitRowEncoder)


@hookimpl
def register_label_extractors(register):
    from graftkit_digits.text import DigitsRulesExtractor

    register("digits-rules", DigitsRulesExtractor)


@hookimpl
def register_compressors(register):
    from graftkit.builtin import zone_compressor

    # Rows sit 1 unit apart and an image is 8 units tall: a longest period of 64 instead of CT's
    # 10,000 mm puts the row position into more channel pairs of the sinusoidal encoding.
    register("digits-rows", partial(zone_compressor, max_period=64.0))


@hookimpl
def register_profiles(register):
    from graftkit_digits.profiles import PROFILES

    for profile in PROFILES:
        register(profile.name, profile)
