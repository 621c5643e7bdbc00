"""Rollout actors killed by PID mid-run: the run goes on and its metrics equal an uninterrupted
run's with the same seed (sampling is deterministic given the seed and weight version)."""

import os
import signal
import threading
import time

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")

from mixgrpo_ray.config import resolve  # noqa: E402
from mixgrpo_ray.train.run_dir import RunDir  # noqa: E402
from mixgrpo_ray.train.training_run import run  # noqa: E402
from tiny_runs import FAST, baseline, comparable  # noqa: E402


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
