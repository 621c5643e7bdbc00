"""A whole node lost, on one machine with three Ray nodes (``ray start`` three times, each with
its own ports and temp dir, every process stopped by PID; never ``ray stop``).

The learner ranks need the custom resource ``lose``, which two worker nodes advertise. The node
holding the learner group is killed (its raylet and every process under it, the actors' workers
included): the group is re-formed on the other node and the rollout actors and reward replicas
that were there are restarted by Ray elsewhere; the run goes on. Then that node is killed too:
no node can hold the group any more, so the run stops cleanly, naming what is missing, the last
checkpoint and the resume command."""

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")
pytest.importorskip("psutil")

from mixgrpo_ray.config import resolve  # noqa: E402
from mixgrpo_ray.train.recovery import RunStopped  # noqa: E402
from mixgrpo_ray.train.run_dir import RunDir  # noqa: E402
from mixgrpo_ray.train.training_run import run  # noqa: E402
from processes import free_port, kill_node  # noqa: E402

BIN = Path(sys.executable).parent
#: node deaths noticed within about a second (Ray's default is 5 missed checks of 3 s)
ENV = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_health_check_period_ms="300",
           RAY_health_check_failure_threshold="3", RAY_health_check_timeout_ms="300")
CONFIG = [
    "model.path=random", "data.prompts_per_iteration=2", "data.eval_prompts=2", "grpo.group_size=4",
    "optim.samples_per_update=4", "sampling.num_steps=6", "window.size=2", "window.initial_start=0",
    "rollout.num_workers=2", "rollout.num_cpus=0.5", "learner.num_workers=2", "learner.num_cpus=0.5",
    "learner.resources={lose: 1}", "learner.placement_timeout_s=6", "rewards.prompt_following.num_cpus=0.25",
    "rewards.quality.num_cpus=0.25", "run.iterations=30", "run.checkpoint_every=1", "run.grid_every=0",
    "run.grid_prompts=0", "run.progress=false",
]


def ray_start(*args: str) -> None:
    done = subprocess.run([str(BIN / "ray"), "start", *args, "--disable-usage-stats"], env=ENV,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture
def three_nodes():
    temps = [tempfile.mkdtemp(prefix=f"nl{i}", dir="/tmp") for i in range(3)]  # short: socket paths
    gcs = free_port()
    ports = {}
    try:
        ray_start("--head", f"--port={gcs}", "--num-cpus=2", f"--temp-dir={temps[0]}", "--include-dashboard=false",
                  f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                  f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}")
        for t in temps[1:]:
            ports[t] = free_port()
            ray_start(f"--address=127.0.0.1:{gcs}", "--num-cpus=2", '--resources={"lose": 2}', f"--temp-dir={t}",
                      f"--node-manager-port={ports[t]}", f"--object-manager-port={free_port()}",
                      f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
                      f"--runtime-env-agent-port={free_port()}")
        ray.init(address=f"127.0.0.1:{gcs}", namespace="mixgrpo", log_to_driver=False)
        yield temps, ports
    finally:
        ray.shutdown()
        for t in reversed(temps):
            kill_node(t)


def node_of(actor_name: str, ports: dict) -> str:
    """The temp dir of the worker node running actor ``actor_name``."""
    actor = ray.get_actor(actor_name)
    node_id = ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))
    port = next(n["NodeManagerPort"] for n in ray.nodes() if n["NodeID"] == node_id)
    return next(t for t, p in ports.items() if p == port)


def test_a_lost_node_is_replaced_where_it_can_be_and_stops_cleanly_where_not(three_nodes, tmp_path):
    temps, ports = three_nodes
    rows = lambda: [r for r in RunDir(tmp_path / "nodes").read_metrics() if "reward_mean" in r]  # noqa: E731
    seen: dict = {}

    def lose_nodes():
        while len(rows()) < 2:
            time.sleep(0.02)
        seen["first"] = node_of("mixgrpo/learner/0", ports)
        kill_node(seen["first"])
        while not any(r["faults/learner_restart"] for r in rows()):
            time.sleep(0.02)
        seen["second"] = node_of("mixgrpo/learner/0", ports)  # the re-formed group, on the other node
        kill_node(seen["second"])

    t = threading.Thread(target=lose_nodes, daemon=True)
    t.start()
    cfg = resolve(None, CONFIG + [f"run.output_dir={tmp_path}", "run.name=nodes"])
    with pytest.raises(RunStopped, match=r"re-forming the learner group failed: cannot start 2 learner rank\(s\) "
                                         r"within 6 s: missing 2 lose \(the cluster has 0\).*the last complete "
                                         r"checkpoint is .*iter_0000\d\d.*--resume"):
        run(cfg)
    t.join(5)
    assert seen["first"] != seen["second"] and {seen["first"], seen["second"]} == set(temps[1:])
    done = rows()
    assert [r["iteration"] for r in done] == list(range(1, len(done) + 1)) and len(done) < 30
    assert sum(r["faults/learner_restart"] for r in done) == 1
