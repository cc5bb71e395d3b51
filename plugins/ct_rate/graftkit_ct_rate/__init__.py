"""graftkit plugin for CT-RATE chest-CT report generation (the reference application)."""

from __future__ import annotations

from graftkit.hookspecs import hookimpl

__version__ = "0.1.0"


# Registered by reference ("module:Class"): a module is imported when its name is used, so
# listing plugins or naming another dataset loads no torch or pandas.
@hookimpl
def register_datasets(register):
    register("ct_rate", "graftkit_ct_rate.dataset:CTRateDataset")


@hookimpl
def register_label_extractors(register):
    register("ct_rate-rules", "graftkit_ct_rate.labels.rules:CTRateRulesExtractor")
    register("ct_rate-radbert", "graftkit_ct_rate.labels.radbert:RadBertExtractor")


@hookimpl
def register_compressors(register):
    from graftkit.compressors import CompressorPreset, zone_compressor

    # The paper's architecture: 32 zones, 16 heads, one global layer. A run that sets any of them
    # otherwise stops with an error; the other compressor settings stay with the run.
    register(
        "ct_rate-32",
        CompressorPreset(
            zone_compressor,
            "the paper's zone compressor",
            num_zones=32,
            num_heads=16,
            num_global_layers=1,
        ),
    )


@hookimpl
def register_profiles(register):
    from graftkit_ct_rate.profiles import PROFILES

    for profile in PROFILES:
        register(profile.name, profile)
