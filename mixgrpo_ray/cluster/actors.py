"""Small Ray helpers shared by the driver and the actor groups."""

from __future__ import annotations

import time

import ray


def kill_actors(actors: list, timeout_s: float = 30.0) -> None:
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
