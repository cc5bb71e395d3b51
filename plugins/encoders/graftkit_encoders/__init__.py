"""graftkit's encoder plugin: ``lejepa-ct`` (LeJEPA / DALE-CT slice ViT on NIfTI and DICOM CT) and
``precomputed`` (existing embedding files), registered exactly as a third-party plugin would.

Heavy imports (torch, transformers, pydicom) are deferred to the encoder modules, so listing
plugins stays fast.
"""

from __future__ import annotations

from graftkit.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_encoders(register):
    from graftkit_encoders.lejepa import LeJepaCTEncoder
    from graftkit_encoders.precomputed import PrecomputedEncoder

    register(LeJepaCTEncoder.name, LeJepaCTEncoder)
    register(PrecomputedEncoder.name, PrecomputedEncoder)
