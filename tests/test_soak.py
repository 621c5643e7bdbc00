"""Soak: 40+ iterations of the tiny preset with 2 rollout actors and 2 replicas per reward pool.
After warm-up the resident memory of every actor stays within a small bound and the object store
does not grow (no ObjectRef, weight version or rollout is kept alive by mistake)."""

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")

from mixgrpo_ray.config import resolve  # noqa: E402
from mixgrpo_ray.run.driver import Driver  # noqa: E402
from mixgrpo_ray.run.run_dir import RunDir  # noqa: E402

ITERATIONS, WARM_UP = 44, 8
RSS_BOUND_MB = 40  # growth allowed per actor after warm-up


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=4, include_dashboard=False, namespace="mixgrpo", log_to_driver=False)
    yield ray
    ray.shutdown()


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def object_store() -> tuple[int, int]:
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    stats = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address)).store_stats
    return int(stats.object_store_bytes_used), int(stats.num_local_objects)


def test_soak_memory_and_object_store_stay_flat(local_ray, tmp_path):
    cfg = resolve(["tiny"], [
        "data.prompts_per_iteration=2", "grpo.group_size=4", "optim.samples_per_update=8", "sampling.num_steps=14",
        "rollout.num_workers=2", "rollout.num_cpus=0.5", "learner.num_cpus=0.5",
        "rewards.prompt_following.replicas=2", "rewards.quality.replicas=2",
        "rewards.prompt_following.num_cpus=0.25", "rewards.quality.num_cpus=0.25",
        f"run.iterations={ITERATIONS}", "run.checkpoint_every=10", "run.keep_checkpoints=1", "run.progress=false",
        "run.grid_every=0",
    ])
    driver = Driver(cfg, RunDir.create(str(tmp_path), "soak"))
    try:
        driver.broadcast(bump=False)
        actors = driver.actors()
        assert len(actors) == 2 + 2 + 2 + 1
        pids = ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in actors])
        samples: list = []
        driver.train_until(ITERATIONS, lambda row: samples.append(([rss_mb(p) for p in pids], object_store())))
    finally:
        driver.shutdown()
    assert len(samples) == ITERATIONS
    warm_rss = samples[WARM_UP - 1][0]
    for rss, _ in samples[WARM_UP:]:
        growth = [r - w for r, w in zip(rss, warm_rss)]
        assert max(growth) < RSS_BOUND_MB, f"actor memory grew by {growth} MB"
    # the object store rises and falls as Ray frees unreferenced objects; it must not trend up:
    # the second half after warm-up never holds more than the first half's peak
    stores = [store for _, store in samples[WARM_UP:]]
    half = len(stores) // 2
    peak_bytes, peak_objects = max(b for b, _ in stores[:half]), max(n for _, n in stores[:half])
    for used, objects in stores[half:]:
        assert used <= peak_bytes + 2**20 and objects <= peak_objects, (stores, peak_bytes, peak_objects)
    assert len(list((tmp_path / "soak" / "checkpoints").glob("iter_*"))) == 1
