"""The Ray resources a run's actors ask for together, checked against a cluster's."""

from __future__ import annotations

import math
from typing import Any

from mixgrpo_ray.config.errors import ConfigError
from mixgrpo_ray.config.root import Config


def required_resources(cfg: Config) -> dict[str, float]:
    """Total Ray resources every actor of the run asks for together."""
    total: dict[str, float] = {"CPU": 0.0, "GPU": 0.0}

    def add(rc: Any, count: int) -> None:
        total["CPU"] += rc.num_cpus * count
        total["GPU"] += rc.num_gpus * count
        for key, val in rc.resources.items():
            total[key] = total.get(key, 0.0) + float(val) * count

    if cfg.run.placement != "colocated":  # colocated: the hybrid workers are the learner ranks
        add(cfg.rollout, cfg.rollout.num_workers)
    add(cfg.learner, cfg.learner.num_workers)
    for rc in cfg.rewards.values():
        add(rc, rc.replicas)
    return total


def fitting_overrides(cfg: Config, key: str, have: float) -> list[str]:
    """``role.num_cpus=x`` / ``role.num_gpus=x`` overrides that scale every role's share of
    resource ``key`` (CPU or GPU) down to what the cluster ``have``s (empty: none would fit)."""
    field = {"CPU": "num_cpus", "GPU": "num_gpus"}.get(key)
    need = required_resources(cfg)[key] if field else 0.0
    if not field or have <= 0 or need <= 0:
        return []
    roles = [("rollout", cfg.rollout)] if cfg.run.placement != "colocated" else []
    roles += [("learner", cfg.learner)]
    roles += [(f"rewards.{name}", rc) for name, rc in cfg.rewards.items()]
    out = []
    for prefix, rc in roles:
        amount = getattr(rc, field)
        if amount > 0:
            scaled = math.floor(amount * have / need * 100) / 100  # rounded down: the total fits
            if scaled <= 0:
                return []
            out.append(f"{prefix}.{field}={scaled:g}")
    return out


def check_cluster_resources(cfg: Config, available: dict[str, float]) -> None:
    """Raise ConfigError when the cluster lacks a resource the actors ask for in total; for CPUs
    and GPUs the message names per-role overrides that would fit."""
    for key, need in required_resources(cfg).items():
        have = float(available.get(key, 0.0))
        if need > have + 1e-9:
            fits = fitting_overrides(cfg, key, have)
            hint = f"overrides that fit: {' '.join(fits)}; or " if fits else ""
            raise ConfigError(
                f"the run asks for {need:g} {key} in total but the Ray cluster has {have:g}; "
                f"{hint}lower the replicas / workers or their {key} settings, or add nodes"
            )
