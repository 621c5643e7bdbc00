"""What differs between a run's saved configuration and the one it is resumed with, and which
differences a resumed run accepts: its length, logging and checkpoint cadence, worker and replica
counts, per-actor resources, placement (colocated or not), fault-handling limits and how Ray is reached. Anything else (model,
data, sampling, window, objective, optimiser, seed) would change what the run computes, so a resume
that changes it is refused, listing the keys."""

from __future__ import annotations

import fnmatch
from typing import Any

from mixgrpo_ray.config.errors import ConfigError

#: keys (glob patterns over dotted paths) a resumed run may change
RESUMABLE = (
    "run.iterations", "run.progress", "run.log_rollouts", "run.grid_every", "run.grid_prompts", "run.eval_every",
    "run.checkpoint_every", "run.checkpoint_every_s", "run.keep_checkpoints",
    "rollout.num_workers", "rollout.max_restarts", "learner.num_workers", "learner.max_restarts", "rewards.*.replicas",
    # where the roles run: a colocated run computes what a disaggregated one does
    "run.placement", "rollout.colocated_weights", "rollout.offload_encoders",
    "rewards.*.max_restarts", "rewards.*.timeout_s", "rewards.*.max_down_s",
    "*.num_cpus", "*.num_gpus", "*.resources", "*.resources.*", "ray.*",
    "rewards.*.options.api_key",  # saved REDACTED; the key comes again from the command line or environment
)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf of a nested dict (lists are leaves)."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, val in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(val, dict) and val:
            out.update(flatten(val, path))
        else:
            out[path] = val
    return out


def config_diff(saved: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, new value)`` for every key that differs (missing = ``None``), sorted."""
    a, b = flatten(saved), flatten(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_resume_diff(saved: dict, new: dict, run: str) -> list[tuple[str, Any, Any]]:
    """The differences; raises ConfigError listing every key a resume may not change."""
    diff = config_diff(saved, new)
    refused = [d for d in diff if not any(fnmatch.fnmatchcase(d[0], pat) for pat in RESUMABLE)]
    if refused:
        keys = ", ".join(f"{k} ({a!r} -> {b!r})" for k, a, b in refused)
        raise ConfigError(
            f"--resume {run}: the config differs from the run's config.yaml in keys a resumed run may not change: "
            f"{keys}; drop those overrides/presets, or start a new run (only iterations, logging, checkpoints, "
            "worker counts and resources may change)"
        )
    return diff
