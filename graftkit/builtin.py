"""Built-in plugin of the core: the generic zone compressor, the engine's phase callbacks, and the
``hf`` dataset (any local Hugging Face ``datasets`` dataset) with its label extractor and
profiles, registered like any plugin's."""

from __future__ import annotations

from graftkit.compressors import zone_compressor
from graftkit.hookspecs import hookimpl

__all__ = [
    "register_callbacks",
    "register_compressors",
    "register_datasets",
    "register_label_extractors",
    "register_profiles",
    "zone_compressor",
]


@hookimpl
def register_compressors(register):
    register("zone", zone_compressor)


@hookimpl
def register_callbacks(register):
    # by reference: listing plugins imports neither torch nor graftkit.eval
    for name, attr in (
        ("init_compressor", "InitCompressor"),
        ("warm_bridge", "WarmBridge"),
        ("freeze_lora", "FreezeLoRA"),
        ("recalibrate", "Recalibrate"),
        ("lars_projector_lr", "LarsProjectorLR"),
        ("ewc", "EWCPenalty"),
    ):
        register(name, f"graftkit.curriculum.callbacks:{attr}")
    register("collapse_monitor", "graftkit.curriculum.monitor:CollapseMonitor")


# by reference: listing plugins or running another dataset imports neither torch nor datasets
@hookimpl
def register_datasets(register):
    register("hf", "graftkit.datasets.hf:HFDataset")


@hookimpl
def register_label_extractors(register):
    register("hf-keywords", "graftkit.datasets.keywords:KeywordExtractor")


@hookimpl
def register_profiles(register):
    from graftkit.datasets.profiles import PROFILES

    for profile in PROFILES:
        register(profile.name, profile)
