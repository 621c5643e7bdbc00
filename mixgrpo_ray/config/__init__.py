"""Typed run configuration: sections, YAML presets, ``section.key=value`` overrides, validation."""

from mixgrpo_ray.config.schema import *  # noqa: F401,F403
from mixgrpo_ray.config.schema import ConfigError, Config  # noqa: F401
