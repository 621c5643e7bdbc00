"""The Ray resources a run's actors ask for together, checked against a cluster's."""

from __future__ import annotations

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

    add(cfg.rollout, cfg.rollout.num_workers)
    add(cfg.learner, cfg.learner.num_workers)
    for rc in cfg.rewards.values():
        add(rc, rc.replicas)
    return total


def check_cluster_resources(cfg: Config, available: dict[str, float]) -> None:
    """Raise ConfigError when the cluster lacks a resource the actors ask for in total."""
    for key, need in required_resources(cfg).items():
        have = float(available.get(key, 0.0))
        if need > have + 1e-9:
            raise ConfigError(
                f"the run asks for {need:g} {key} in total but the Ray cluster has {have:g}; "
                f"lower the replicas / workers or their {key} settings, or add nodes"
            )
