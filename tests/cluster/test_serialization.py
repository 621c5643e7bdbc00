"""Tensors between processes (mixgrpo_ray/cluster/serialization.py): exact round trips of every
dtype the pipeline sends, writable results, and no reference cycles left in the sender."""

import gc
import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")

from mixgrpo_ray.cluster import serialization  # noqa: E402
from mixgrpo_ray.core.trajectory import Trajectory  # noqa: E402


LOCAL_RAY = {"num_cpus": 1}  # tests/conftest.py


@pytest.fixture(scope="module")
def serializing_ray(local_ray):
    """The local Ray with the project's tensor serialization installed in this process."""
    serialization.install()
    return local_ray


CASES = {
    "float32": torch.randn(3, 5),
    "bfloat16": torch.randn(4, 7).to(torch.bfloat16),
    "long": torch.arange(-5, 7),
    "bool": torch.tensor([True, False, True]),
    "uint8 images": torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8),
    "empty": torch.empty(0, 4),
    "non-contiguous": torch.randn(6, 4).t()[1:],
    "scalar": torch.tensor(3.5),
    "large": torch.randn(300_000),  # beyond Ray's inline limit: goes through the object store
}


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_is_exact_and_writable(serializing_ray, name):
    t = CASES[name]
    out = ray.get(ray.put(t))
    assert out.dtype == t.dtype and out.shape == t.shape
    assert torch.equal(out, t)
    out.add_(1) if out.dtype != torch.bool else out.logical_not_()  # a private, writable copy
    assert torch.equal(ray.get(ray.put(t)), t)


def test_grad_is_dropped_and_values_kept(serializing_ray):
    w = torch.randn(3, requires_grad=True)
    out = ray.get(ray.put(w * 2))
    assert not out.requires_grad and torch.equal(out, (w * 2).detach())


def test_nested_structures_and_no_cycles_left(serializing_ray):
    traj = Trajectory(prompts=["a", "b"], latents=torch.randn(2, 3, 4), next_latents=torch.randn(2, 3, 4),
                      sigmas=torch.rand(2, 3), sigmas_next=torch.rand(2, 3), log_probs=torch.randn(2, 3),
                      steps=torch.arange(6).view(2, 3), version=4, sde_kind="flow", noise_level=0.7)
    gc.collect()
    gc.disable()
    try:
        ref = ray.put({"traj": traj, "images": torch.zeros(2, 3, 16, 16, dtype=torch.uint8)})
        found = gc.collect()
    finally:
        gc.enable()
    # torch's own pickling leaves a pickler class cycle per storage; this path leaves none
    assert found == 0
    back = ray.get(ref)["traj"]
    for field in ("latents", "next_latents", "sigmas", "sigmas_next", "log_probs", "steps"):
        assert torch.equal(getattr(back, field), getattr(traj, field))
    assert back.prompts == traj.prompts and back.version == 4


def test_actor_returns_use_it(serializing_ray):
    @ray.remote
    class Sender:
        def __init__(self):
            serialization.install()

        def make(self):
            import gc as g
            g.collect()
            self.before = g.get_count()
            return torch.arange(200_000, dtype=torch.float32)

        def garbage(self):
            import gc as g
            return g.collect()

    a = Sender.remote()
    out = ray.get(a.make.remote())
    assert torch.equal(out, torch.arange(200_000, dtype=torch.float32))
    assert ray.get(a.garbage.remote()) == 0
