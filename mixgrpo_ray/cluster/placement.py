"""Placement of the learner ranks: one Ray placement group, one bundle per rank, ``PACK`` strategy
(ranks packed onto as few nodes as fit them, spread over more nodes when one does not hold them
all), so the ranks of a learner group start together or not at all. A group that cannot be
placed within ``learner.placement_timeout_s`` is removed again and reported in one line naming
the resource the cluster lacks."""

from __future__ import annotations

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

from mixgrpo_ray.config import ActorResources


def bundle_of(resources: ActorResources) -> dict[str, float]:
    """What one rank reserves (a bundle must not be empty: a CPU-less rank reserves 0.01 CPU)."""
    bundle = {"CPU": float(resources.num_cpus) or 0.01}
    if resources.num_gpus:
        bundle["GPU"] = float(resources.num_gpus)
    bundle.update({k: float(v) for k, v in resources.resources.items() if v})
    return bundle


def missing(bundle: dict[str, float], count: int, cluster: dict[str, float]) -> str:
    """Why ``count`` bundles do not fit ``cluster`` (total resources), in words."""
    short = [f"{need * count:g} {key} (the cluster has {cluster.get(key, 0.0):g})"
             for key, need in bundle.items() if need * count > cluster.get(key, 0.0) + 1e-9]
    if short:
        return "missing " + ", ".join(short)
    return (f"the cluster has enough {', '.join(bundle)} in total but not free, or no node holds one "
            f"rank's bundle {bundle}")


def place(role: str, resources: ActorResources, count: int, timeout_s: float) -> PlacementGroup:
    """A ready placement group of ``count`` bundles for the ranks of ``role``."""
    bundle = bundle_of(resources)
    pg = placement_group([dict(bundle) for _ in range(count)], strategy="PACK")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise RuntimeError(
            f"cannot start {count} {role} rank(s) within {timeout_s:g} s: "
            f"{missing(bundle, count, ray.cluster_resources())}"
        ) from None
    return pg
