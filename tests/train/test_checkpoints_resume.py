"""Checkpoints (checksums, keep N, time-based, no unpickling) and ``--resume auto`` after the
driver's process is killed: the re-submitted command continues from the latest complete
checkpoint; a changed config or a corrupt file is refused with one line and exit code 2."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from mixgrpo_ray.common import checkpoint as ckpt
from processes import kill_ray_under
from repo_paths import ROOT

SMALL = [
    "model.path=random", "data.prompts_per_iteration=2", "data.eval_prompts=2", "grpo.group_size=4",
    "optim.samples_per_update=8", "sampling.num_steps=8", "window.size=2", "window.initial_start=0",
    "rollout.num_workers=1", "rollout.num_cpus=0.5", "learner.num_cpus=0.5",
    "rewards.prompt_following.num_cpus=0.25", "rewards.quality.num_cpus=0.25", "run.grid_every=0",
    "run.grid_prompts=0", "run.progress=false", "ray.dashboard=false", "run.name=job",
]


def make_checkpoint(run: Path, iteration: int) -> Path:
    staging = ckpt.staging_dir(run, iteration)
    ckpt.save_weights(staging, {"w": torch.arange(1000.0)}, iteration)
    ckpt.save_trainer_state(staging, {"state": {}, "param_groups": []}, iteration)
    return ckpt.commit(run, staging, iteration, {"iteration": iteration, "version": iteration})


def test_prune_leaves_nothing_half_deleted(tmp_path):
    """Pruning renames a checkpoint away before deleting it, and clears what an interrupted
    deletion left (an incomplete older folder, a ``.deleting`` folder)."""
    for it in (2, 3, 4):
        make_checkpoint(tmp_path, it)
    root = tmp_path / "checkpoints"
    (root / "iter_000001").mkdir()  # a deletion killed after it removed state.json
    (root / "iter_000001" / "weights.safetensors").write_bytes(b"x")
    (root / ".iter_000000.deleting").mkdir()
    assert ckpt.prune(tmp_path, 1) == [root / "iter_000002", root / "iter_000003"]
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(("iter_", ".iter_"))) == ["iter_000004"]


def test_checksums_keep_n_and_no_unpickling(tmp_path):
    for it in (1, 2, 3):
        make_checkpoint(tmp_path, it)
    assert ckpt.prune(tmp_path, 2) == [tmp_path / "checkpoints" / "iter_000001"]
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "iter_000003"
    ckpt.verify(latest)  # intact
    weights = latest / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    with pytest.raises(ckpt.CheckpointError, match="weights.safetensors is corrupt or truncated"):
        ckpt.verify(latest)
    # optimiser state holding an arbitrary object is refused, never unpickled
    torch.save({"optimizer": {}, "version": 0, "torch_rng": torch.get_rng_state(), "x": Path("/")},
               latest / "optimizer.pt")
    with pytest.raises(ckpt.CheckpointError, match="optimizer.pt: cannot read optimiser state"):
        ckpt.load_trainer_state(latest)


def cli(out, tmpdir, *args, wait=True, sink=None):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT), "RAY_TMPDIR": tmpdir}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "mixgrpo_ray.cli.train_cli", "--resume", "auto", *SMALL, f"run.output_dir={out}", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_killed_driver_is_restarted_by_driver_restarts_and_resumes(tmp_path):
    """``train --resume auto --driver-restarts 1`` (the job-level retry for ``ray job submit``): the
    driver killed by PID mid-run is run again by the command itself, continues from the latest
    checkpoint and finishes the run; then a changed config is refused and a corrupt checkpoint named."""
    import psutil

    out = tmp_path / "runs"
    tmpdir = tempfile.mkdtemp(prefix="rayr", dir="/tmp")
    common = ["run.iterations=8", "run.checkpoint_every=0", "run.checkpoint_every_s=0.000001", "run.keep_checkpoints=2"]
    log = tmp_path / "supervised.log"
    try:
        with open(log, "w") as sink:
            proc = cli(out, tmpdir, "--driver-restarts", "1", *common, wait=False, sink=sink)
            deadline = time.monotonic() + 240
            while not (out / "job" / "checkpoints" / "iter_000003" / "state.json").exists():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.05)
            drivers = psutil.Process(proc.pid).children()
            assert len(drivers) == 1
            drivers[0].send_signal(signal.SIGKILL)  # the driver dies mid-run; the command runs it again
            assert proc.wait(timeout=280) == 0, log.read_text()[-3000:]
    finally:
        kill_ray_under(tmpdir)
    text = log.read_text()
    assert "the driver was killed by SIGKILL; running it again" in text and "resumed from" in text, text[-3000:]
    run = out / "job"
    rows = [r for r in __import__("mixgrpo_ray.train.run_dir", fromlist=["RunDir"]).RunDir(run).read_metrics()
            if "reward_mean" in r]
    assert [r["iteration"] for r in rows] == list(range(1, 9))
    kept = sorted(p.name for p in (run / "checkpoints").glob("iter_*"))
    assert kept == ["iter_000007", "iter_000008"]  # time-based checkpoints (run.checkpoint_every=0), keep 2
    no_resume = subprocess.run([sys.executable, "-m", "mixgrpo_ray.cli", "train", "--driver-restarts", "2"],
                               capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert no_resume.returncode == 2 and "--driver-restarts needs --resume auto" in no_resume.stderr

    changed = cli(out, tmpdir, *common, "optim.lr=0.5", "sampling.shift=2")
    err = changed.stderr.strip().splitlines()
    assert changed.returncode == 2 and len(err) == 1, changed.stderr
    assert "optim.lr (5e-05 -> 0.5)" in err[0] and "sampling.shift (3.0 -> 2.0)" in err[0]

    weights = ckpt.latest_checkpoint(run) / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    broken = cli(out, tmpdir, "run.iterations=9")
    err = broken.stderr.strip().splitlines()
    assert broken.returncode == 2 and len(err) == 1 and str(weights) in err[0], broken.stderr
