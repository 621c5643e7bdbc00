"""One way to start the actors of every role, and to stop them.

:func:`spawn_actors` creates ``count`` named actors ``mixgrpo/<role>/<i>`` of one class with the
resources of the role's config section (``num_cpus``, ``num_gpus``, custom ``resources``) and waits
until each has finished its constructor. :class:`ActorGroup` is the small base the role groups
(rollout workers, reward pools, learner group) build on: it holds the handles, calls a method on
all of them, and kills them.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import ray

from mixgrpo_ray.config import ActorResources


def actor_name(role: str, index: int) -> str:
    """The name an actor shows in the Ray dashboard, e.g. ``mixgrpo/reward/hps/0``."""
    return f"mixgrpo/{role}/{index}"


def spawn_actors(
    cls: type,
    role: str,
    count: int,
    resources: ActorResources,
    args: Callable[[int], tuple] = lambda i: (),
    *,
    max_concurrency: int = 1,
    wait: bool = True,
    placement_group: Any = None,
) -> list:
    """``count`` actors of ``cls`` named ``mixgrpo/<role>/<i>``; actor ``i`` is constructed with
    ``args(i)``. With ``wait`` every constructor has finished (and raised, if it failed) on return;
    on failure the actors already started are killed. With ``placement_group`` actor ``i`` takes
    its bundle ``i``."""
    remote_cls = ray.remote(cls)
    handles = []
    try:
        for i in range(count):
            handles.append(
                remote_cls.options(
                    name=actor_name(role, i),
                    num_cpus=resources.num_cpus,
                    num_gpus=resources.num_gpus,
                    resources=dict(resources.resources) or None,
                    max_concurrency=max_concurrency,
                    **_in_bundle(placement_group, i),
                ).remote(*args(i))
            )
        if wait:
            ray.get([h.__ray_ready__.remote() for h in handles])
    except BaseException:
        kill_actors(handles)
        raise
    return handles


def _in_bundle(placement_group: Any, index: int) -> dict:
    if placement_group is None:
        return {}
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group, placement_group_bundle_index=index)}


def kill_actors(actors: Sequence, timeout_s: float = 30.0) -> None:
    """Kill ``actors`` and wait until each is dead, so its name can be taken again."""
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - already gone
            pass
    deadline = time.monotonic() + timeout_s
    for actor in actors:
        while time.monotonic() < deadline:
            try:
                ray.get(actor.__ray_ready__.remote(), timeout=1)
            except Exception:  # noqa: BLE001 - dead, as wanted
                break
            time.sleep(0.1)


class ActorGroup:
    """The actors of one role: ``self.actors`` (handles), calls on all, shutdown."""

    def __init__(self, actors: list) -> None:
        self.actors = list(actors)

    def __len__(self) -> int:
        return len(self.actors)

    def call_all(self, method: str, *args: Any, **kwargs: Any) -> list:
        """ObjectRefs of ``method(*args, **kwargs)`` on every actor, in actor order."""
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def get_all(self, method: str, *args: Any, **kwargs: Any) -> list:
        """The results of :meth:`call_all`."""
        return ray.get(self.call_all(method, *args, **kwargs))

    def shutdown(self) -> None:
        kill_actors(self.actors)
