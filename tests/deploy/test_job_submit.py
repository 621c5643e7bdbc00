"""``ray job submit`` against a real head node that this test starts and stops itself.

The head uses free ports and its own ``--temp-dir``; it is stopped by PID (never ``ray stop``,
which would kill every Ray process on the machine). Auth is disabled explicitly for this private
head (Ray 2.60 enables token auth by default).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from repo_paths import ROOT

BIN = Path(sys.executable).parent


def free_ports(n):
    socks, ports = [], []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        if 10002 <= port <= 19999:  # Ray's default worker port range
            s.close()
            continue
        socks.append(s)
        ports.append(port)
    for s in socks:
        s.close()
    return ports


def pids_using(temp_dir: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmd and int(entry.name) != os.getpid():
            out.append(int(entry.name))
    return out


def kill_tree(temp_dir: str) -> None:
    for sig, wait_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        pids = pids_using(temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait_s
        while pids_using(temp_dir) and time.time() < deadline:
            time.sleep(0.2)


@pytest.fixture
def head_node():
    temp_dir = tempfile.mkdtemp(prefix="mgr", dir="/tmp")  # short: Ray's socket paths are length-limited
    gcs, dash, client, agent, metrics = free_ports(5)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    cmd = [
        str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}", "--num-cpus=4", f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=180)
        yield {"dashboard": f"http://127.0.0.1:{dash}", "metrics": f"http://127.0.0.1:{metrics}/metrics",
               "env": env, "temp_dir": temp_dir}
    finally:
        kill_tree(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def driver_pids() -> list[int]:
    """The processes running a driver that ``train --driver-restarts`` started."""
    return [pid for pid in pids_using("-m mixgrpo_ray.cli train")]


def test_ray_job_submit_tiny_run_whose_driver_is_killed(head_node, tmp_path):
    """The documented entrypoint (``--resume auto --driver-restarts``) submitted with ``ray job
    submit``: its driver killed by PID mid-run is run again inside the same job, which continues
    from the latest checkpoint and succeeds with every iteration logged once."""
    env = head_node["env"]
    out_dir = tmp_path / "runs"
    entry = [
        "mixgrpo-ray", "train", "--resume", "auto", "--driver-restarts", "1",
        "model.path=random", "run.iterations=4", "run.checkpoint_every=2",
        "run.grid_every=0", "run.grid_prompts=0", "run.progress=false", f"run.output_dir={out_dir}",
        "run.name=job", "data.prompts_per_iteration=2", "data.eval_prompts=2", "grpo.group_size=4",
        "optim.samples_per_update=4", "sampling.num_steps=6", "window.size=2", "window.initial_start=0",
        "rollout.num_workers=1", "rollout.num_cpus=0.5", "learner.num_cpus=0.5",
        "rewards.prompt_following.num_cpus=0.25", "rewards.quality.num_cpus=0.25",
    ]
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", head_node["dashboard"], "--working-dir", str(ROOT),
         "--runtime-env", str(ROOT / "deploy" / "runtime_env.yaml"), "--no-wait", "--", *entry],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr

    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(head_node["dashboard"])
    job_id = client.list_jobs()[-1].submission_id
    deadline = time.time() + 420
    while not (out_dir / "job" / "checkpoints" / "iter_000002" / "state.json").exists():
        assert time.time() < deadline and client.get_job_status(job_id) not in (JobStatus.FAILED, JobStatus.STOPPED), \
            client.get_job_logs(job_id)[-3000:]
        time.sleep(0.1)
    killed = driver_pids()
    assert len(killed) == 1, killed
    os.kill(killed[0], signal.SIGKILL)
    status = None
    while time.time() < deadline:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(2)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "held-out rewards" in logs
    assert "the driver was killed by SIGKILL; running it again" in logs and "resumed from" in logs, logs[-3000:]
    import json

    rows = [json.loads(line) for line in (out_dir / "job" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "reward_mean" in r] == [1, 2, 3, 4]
    assert killed[0] not in driver_pids()

    from ray.util.state import list_actors

    names = {a.name for a in list_actors(address=head_node["dashboard"], limit=1000)}
    for name in ("mixgrpo/rollout/0", "mixgrpo/reward/prompt_following/0", "mixgrpo/reward/quality/0",
                 "mixgrpo/learner/0"):
        assert name in names, names

    # custom metrics reach the node's Prometheus endpoint (Ray prefixes them with ray_)
    seen = ""
    deadline = time.time() + 90
    while time.time() < deadline:
        seen = urllib.request.urlopen(head_node["metrics"], timeout=10).read().decode()
        if "ray_mixgrpo_" in seen:
            break
        time.sleep(3)
    assert "ray_mixgrpo_" in seen
