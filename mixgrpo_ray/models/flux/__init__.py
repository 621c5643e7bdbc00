"""FLUX.1 behind the Policy interface: diffusers components, cached prompt encodings, optional LoRA.

``FluxPolicy`` (defined in :mod:`mixgrpo_ray.models.flux.flux_policy`) is re-exported here and
imported on first use, so importing this package does not import diffusers.
"""

__all__ = ["FluxPolicy"]


def __getattr__(name: str):
    if name == "FluxPolicy":
        from mixgrpo_ray.models.flux.flux_policy import FluxPolicy

        return FluxPolicy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
