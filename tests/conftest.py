"""Fixtures shared by the whole suite.

- ``local_ray``: a private local Ray for one test module (``ray.init(address="local", ...)``, never
  a bare ``ray.init()``), shut down after the module. A module tunes it with a module-level
  ``LOCAL_RAY`` dict of ``ray.init`` keywords, merged over :data:`LOCAL_RAY_DEFAULTS`. Ray's
  workers get ``tests/helpers`` on their ``PYTHONPATH`` (the plug-in rewards the tests name live
  there).
- ``one_thread``: run a test on one torch CPU thread (as rollout workers do).

The helper modules in ``tests/helpers`` (tiny checkpoints, run helpers) are importable by name.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parent / "helpers"
sys.path.insert(0, str(HELPERS))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

LOCAL_RAY_DEFAULTS = {"num_cpus": 4, "include_dashboard": False, "namespace": "mixgrpo", "log_to_driver": False}


@pytest.fixture(scope="module")
def local_ray(request):
    ray = pytest.importorskip("ray")
    options = {**LOCAL_RAY_DEFAULTS, **getattr(request.module, "LOCAL_RAY", {})}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(HELPERS), os.environ.get("PYTHONPATH")) if p))
        ray.init(address="local", **options)
        try:
            yield ray
        finally:
            ray.shutdown()


@pytest.fixture
def one_thread():
    """Run on one CPU thread (as rollout workers do), restoring the thread count afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
