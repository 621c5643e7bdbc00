"""The one way every command connects to or starts Ray.

:func:`start_ray` joins the cluster at ``address`` (or ``RAY_ADDRESS``, as ``ray job submit`` sets
it); with neither (or ``private=True``), it starts a private local Ray (``address="local"``, never a cluster that
happens to run on the machine) with token auth off unless ``RAY_AUTH_MODE`` says otherwise,
enough logical CPUs and the custom resources the caller needs, and the dashboard on 127.0.0.1
only. :func:`ray_running` is the same as a context manager that shuts Ray down on exit.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Mapping, Optional


def cluster_address(address: str = "") -> str:
    """The cluster to join: ``address`` if given, else ``RAY_ADDRESS``; "" means start a local one."""
    return address or os.environ.get("RAY_ADDRESS", "")


def start_ray(*, address: str = "", namespace: Optional[str] = None, need: Optional[Mapping[str, float]] = None,
              num_cpus: int = 0, dashboard: bool = False, log_to_driver: bool = True,
              keep_sigterm: bool = False, private: bool = False) -> str:
    """Connect to or start Ray; returns the GCS address (for child processes' ``RAY_ADDRESS``).

    need: resources the caller's actors ask for (``{"CPU": 6, "reward_hps": 1}``); a local Ray gets
    at least ``need["CPU"]`` logical CPUs (and at least the machine's cores) and every custom
    resource. num_cpus > 0 sets the local CPU count outright. keep_sigterm: keep the caller's
    SIGTERM handler (Ray's driver installs one that aborts the process). private: always a local
    Ray of its own, even under ``RAY_ADDRESS`` (benchmarks, whose timings must not share a cluster).
    """
    import ray

    joined = "" if private else cluster_address(address)
    if joined:
        ray.init(address=joined, namespace=namespace, log_to_driver=log_to_driver)
        return ray.get_runtime_context().gcs_address
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private, local instance
    need = dict(need or {})
    cpus = num_cpus or max(os.cpu_count() or 1, math.ceil(need.get("CPU", 1)))
    custom = {k: float(v) for k, v in need.items() if k not in ("CPU", "GPU")}
    on_term = signal.getsignal(signal.SIGTERM)
    ctx = ray.init(address="local", num_cpus=cpus, namespace=namespace, resources=custom or None,
                   include_dashboard=dashboard, dashboard_host="127.0.0.1", log_to_driver=log_to_driver)
    if keep_sigterm and callable(on_term) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    if dashboard and getattr(ctx, "dashboard_url", None):
        print(f"Ray dashboard: http://{ctx.dashboard_url}", flush=True)
    return ray.get_runtime_context().gcs_address


@contextmanager
def ray_running(**kwargs) -> Iterator[str]:
    """:func:`start_ray` for the ``with`` block, then ``ray.shutdown()``; yields the GCS address."""
    import ray

    gcs = start_ray(**kwargs)
    try:
        yield gcs
    finally:
        ray.shutdown()
