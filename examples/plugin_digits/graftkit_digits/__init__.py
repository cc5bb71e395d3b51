"""graftkit plugin: handwritten digits as a second modality (rows as slices, written reports)."""

from __future__ import annotations

from functools import partial

from graftkit.hookspecs import hookimpl

__version__ = "0.1.0"


# "module:Class" references: graftkit imports a module only when its name is asked for, so
# `graftkit plugins` or a run of another dataset never loads torch or scikit-learn for digits.
@hookimpl
def register_datasets(register):
    register("digits", "graftkit_digits.dataset:DigitsDataset")


@hookimpl
def register_encoders(register):
    register("digits-rows", "graftkit_digits.encoder:DigitRowEncoder")


@hookimpl
def register_label_extractors(register):
    register("digits-rules", "graftkit_digits.text:DigitsRulesExtractor")


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
