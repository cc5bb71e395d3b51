"""graftkit's encoder plugin: ``lejepa-ct`` (LeJEPA / DALE-CT slice ViT on NIfTI and DICOM CT) and
``precomputed`` (existing embedding files), registered exactly as a third-party plugin would.

The encoders are registered by reference (``"module:Class"``): their modules, and torch,
transformers and pydicom with them, are imported only when an encoder is used.
"""

from __future__ import annotations

from graftkit.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_encoders(register):
    register("lejepa-ct", "graftkit_encoders.lejepa:LeJepaCTEncoder")
    register("precomputed", "graftkit_encoders.precomputed:PrecomputedEncoder")
