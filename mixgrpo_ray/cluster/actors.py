"""One way to start the actors of every role, and to stop them.

:func:`spawn_actors` creates ``count`` named actors ``mixgrpo/<role>/<i>`` of one class with the
resources of the role's config section (``num_cpus``, ``num_gpus``, custom ``resources``) and waits
until each has finished its constructor. :class:`ActorGroup` is the small base the role groups
(rollout workers, reward pools, learner group) build on: it holds the handles, calls a method on
all of them, and kills them.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import ray

from mixgrpo_ray.config import ActorResources


#: the Ray namespace actors are spawned in (None: the job's own); see :func:`actor_namespace`
_NAMESPACE: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("mixgrpo_actor_namespace", default=None)


@contextlib.contextmanager
def actor_namespace(namespace: str) -> Iterator[None]:
    """Spawn the actors created inside this block in the Ray namespace ``namespace``, so that
    several runs (e.g. the benchmark's variants) can live side by side under the same names."""
    token = _NAMESPACE.set(namespace)
    try:
        yield
    finally:
        _NAMESPACE.reset(token)


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
    max_restarts: int = 0,
    max_task_retries: int = 0,
    placement_group: Any = None,
) -> list:
    """``count`` actors of ``cls`` named ``mixgrpo/<role>/<i>``; actor ``i`` is constructed with
    ``args(i)``. With ``wait`` every constructor has finished (and raised, if it failed) on return;
    on failure the actors already started are killed. ``max_restarts``: how often Ray restarts an
    actor whose process died (its constructor runs again); ``max_task_retries``: how often a call
    that was running or queued on it is retried on the restarted actor (only for roles whose
    calls are safe to repeat). With ``placement_group`` actor ``i`` takes its bundle ``i``."""
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
                    namespace=_NAMESPACE.get(),
                    max_restarts=max_restarts,
                    max_task_retries=max_task_retries,
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
    """Kill ``actors`` (for good, no restart) and wait until each is dead, so its name can be
    taken again."""
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
    deadline = time.monotonic() + timeout_s
    for actor in actors:
        while time.monotonic() < deadline:
            try:
                # no retries: an actor made with max_task_retries would have Ray retry the probe of
                # a killed actor and log "Task ...__ray_ready__ failed ... killed by ray.kill"
                ray.get(actor.__ray_ready__.options(max_task_retries=0).remote(), timeout=1)
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
