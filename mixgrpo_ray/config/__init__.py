"""Typed run configuration: pydantic sections, YAML presets, ``section.key=value`` overrides.

Modules: :mod:`~.values` (field types and choices), :mod:`~.sections` (one model per section),
:mod:`~.root` (the root :class:`Config`, cross-section checks, :func:`from_dict`),
:mod:`~.loading` (preset files, merging, overrides, :func:`resolve`), :mod:`~.resources`
(Ray resources of a run), :mod:`~.errors` (:class:`ConfigError`: every problem as one line).
"""

from mixgrpo_ray.config.errors import ConfigError
from mixgrpo_ray.config.layering import (
    DEFAULT_PRESET, PRESET_PACKAGE, apply_override, deep_merge, load_preset, parse_override, preset_names, resolve,
)
from mixgrpo_ray.config.resources import check_cluster_resources, required_resources
from mixgrpo_ray.config.root import Config, from_dict, sampling_calls, validate
from mixgrpo_ray.config.sections import (
    ActorResources, DataConfig, GRPOConfig, LearnerConfig, ModelConfig, OptimConfig, RayConfig, RewardConfig,
    RolloutConfig, RunConfig, SamplingConfig, Section, WindowConfig,
)
from mixgrpo_ray.config.values import REWARD_KIND_NAMES

__all__ = [
    "ActorResources", "Config", "ConfigError", "DEFAULT_PRESET", "DataConfig", "GRPOConfig", "LearnerConfig",
    "ModelConfig", "OptimConfig", "PRESET_PACKAGE", "REWARD_KIND_NAMES", "RayConfig", "RewardConfig",
    "RolloutConfig", "RunConfig", "SamplingConfig", "Section", "WindowConfig", "apply_override",
    "check_cluster_resources", "deep_merge", "from_dict", "load_preset", "parse_override", "preset_names",
    "required_resources", "resolve", "sampling_calls", "validate",
]
