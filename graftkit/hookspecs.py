"""The graftkit hook specifications (pluggy project ``graftkit``).

Each hook is a verb that receives a ``register(name, obj)`` callable; the host validates what is
registered (type, duplicate names) and names the offending plugin in every error.
See ``docs/plugins.md`` for one heading per hook.
"""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("graftkit")
hookimpl = HookimplMarker("graftkit")


@hookspec
def register_encoders(register):
    """Register slice/segment encoders: ``register(name, EncoderSubclass)``."""


@hookspec
def register_compressors(register):
    """Register zone compressors: ``register(name, builder)``, ``builder(dim, bridge) -> nn.Module``."""


@hookspec
def register_label_extractors(register):
    """Register label extractors: ``register(name, LabelExtractorSubclass)``."""


@hookspec
def register_datasets(register):
    """Register datasets: ``register(name, GraftDatasetSubclass)``."""


@hookspec
def register_profiles(register):
    """Register run presets and launch profiles: ``register(name, Profile(...))``."""


@hookspec
def register_callbacks(register):
    """Register phase callbacks a config can name: ``register(name, CallbackSubclass)``."""
