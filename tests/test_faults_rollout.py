"""Rollout actors killed by PID mid-run: the run goes on and its metrics equal an uninterrupted
run's with the same seed (sampling is deterministic given the seed and weight version)."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")

from mixgrpo_ray.config import resolve  # noqa: E402
from mixgrpo_ray.run.run_dir import RunDir  # noqa: E402
from mixgrpo_ray.run.training import run  # noqa: E402

FAST = [
    "model.path=random", "data.prompts_per_iteration=4", "data.eval_prompts=4", "grpo.group_size=4",
    "optim.samples_per_update=8", "optim.lr=1e-3", "sampling.num_steps=12", "window.size=2",
    "window.initial_start=0", "window.strategy=progressive", "window.shift_interval=1", "rollout.num_workers=2",
    "rollout.num_cpus=0.5",
    "learner.num_cpus=0.5", "rewards.prompt_following.num_cpus=0.25", "rewards.quality.num_cpus=0.25",
    "run.checkpoint_every=0", "run.grid_every=0", "run.grid_prompts=0", "run.progress=false",
]
#: keys that measure time or count faults: the only ones allowed to differ
VOLATILE = ("time/", "images_per_second", "faults/", "sync/seconds", "sync/gbps")  # wall-clock dependent


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=4, include_dashboard=False, namespace="mixgrpo", log_to_driver=False)
    yield ray
    ray.shutdown()


_BASELINES: dict = {}


def baseline(out, overrides):
    """The metrics of an uninterrupted run with ``overrides`` (run once per module and config)."""
    key = tuple(overrides)
    if key not in _BASELINES:
        assert run(resolve(None, list(overrides) + [f"run.output_dir={out}", "run.name=clean"])) == 0
        _BASELINES[key] = comparable(Path(out) / "clean")
    return _BASELINES[key]


def comparable(run_dir):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in RunDir(run_dir).read_metrics()]


def kill_when(run_dir, iteration, name, pids):
    """Kill actor ``name``'s process once ``iteration`` is logged (the next iteration is starting)."""
    def go():
        while not any(r.get("iteration") == iteration and "reward_mean" in r for r in RunDir(run_dir).read_metrics()):
            time.sleep(0.01)
        pid = ray.get(ray.get_actor(name, namespace="mixgrpo").pid.remote())
        os.kill(pid, signal.SIGKILL)
        pids.append(pid)
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("restarts, fault, transport", [
    (3, "faults/rollout_restart", "object_store"), (0, "faults/rollout_reassigned", "object_store"),
    (3, "faults/rollout_restart", "collective"), (0, "faults/rollout_reassigned", "collective"),
])
def test_killed_rollout_actor_leaves_metrics_identical(local_ray, tmp_path, restarts, fault, transport):
    # neither rollout.max_restarts nor the transport (fp32 weights, bit-identical) changes results;
    # collective: a restarted actor gets the weights again from a re-formed group, and a dropped
    # one is left out of the next group (no broadcast waits for it)
    clean = baseline(tmp_path, FAST + ["run.iterations=4"])
    common = FAST + [f"run.output_dir={tmp_path}", "run.iterations=4", f"rollout.max_restarts={restarts}",
                     f"learner.sync_transport={transport}"]
    pids: list = []
    killer = kill_when(tmp_path / "killed", 1, "mixgrpo/rollout/1", pids)
    assert run(resolve(None, common + ["run.name=killed"])) == 0
    killer.join(5)
    assert pids, "the actor was not killed"
    killed = comparable(tmp_path / "killed")
    assert len(clean) == 6 and clean == killed  # eval before, 4 iterations, eval after
    rows = [r for r in RunDir(tmp_path / "killed").read_metrics() if "reward_mean" in r]
    assert sum(r[fault] for r in rows) == 1
    assert all(r[f"faults/{k}"] == 0 for r in rows for k in ("reward_retry", "reward_timeout"))
