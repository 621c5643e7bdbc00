"""A tiny-FLUX run through ``mixgrpo-ray train`` on a local Ray: 2 iterations, two real-architecture
reward models (PickScore and CLIP score on tiny CLIP checkpoints), prompts from a local file."""

import json
import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")

from mixgrpo_ray.train.run_dir import RunDir  # noqa: E402
from mixgrpo_ray.cli.train_cli import main as train_main  # noqa: E402
from tiny_clip import save_tiny_clip  # noqa: E402
from tiny_flux import IMAGE_SIZE, build_tiny_flux  # noqa: E402


def test_tiny_flux_two_iterations_with_real_reward_architectures(tmp_path, monkeypatch):
    flux = build_tiny_flux(tmp_path / "flux")
    clip_a = save_tiny_clip(tmp_path / "pick", seed=1)
    clip_b = save_tiny_clip(tmp_path / "clip", seed=2)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\na red car on a road\na bowl of fruit\na mountain lake at dawn\n")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # everything is local; fail fast otherwise
    args = [
        "--config", "flux", "--config", "mixgrpo_flash",
        f"model.path={flux}", f"model.height={IMAGE_SIZE}", f"model.width={IMAGE_SIZE}",
        "model.max_sequence_length=16", "model.gradient_checkpointing=false",
        f"data.train={prompts}", f"data.eval={prompts}", "data.prompts_per_iteration=2", "data.eval_prompts=2",
        "grpo.group_size=3", "optim.samples_per_update=3", "sampling.num_steps=8", "window.size=2",
        "rollout.num_workers=1", "rollout.num_cpus=0.5", "rollout.num_gpus=0", "rollout.resources=null",
        "rollout.torch_threads=1", "rollout.prompts_per_call=0",
        "learner.num_workers=1", "learner.num_cpus=0.5", "learner.num_gpus=0", "learner.resources=null",
        "learner.torch_threads=1",
        "rewards.hps=null", "rewards.imagereward=null",
        "rewards.pickscore.kind=pickscore", f"rewards.pickscore.options={{model: {clip_a}, processor: {clip_a}, device: cpu}}",
        "rewards.pickscore.num_cpus=0.25", "rewards.pickscore.num_gpus=0", "rewards.pickscore.resources=null",
        "rewards.clip.kind=clip", f"rewards.clip.options={{model: {clip_b}, device: cpu}}",
        "rewards.clip.num_cpus=0.25",
        "run.iterations=2", "run.checkpoint_every=0", "run.grid_every=0", "run.grid_prompts=0",
        "run.progress=false", f"run.output_dir={tmp_path / 'runs'}", "run.name=flux", "ray.num_cpus=4",
    ]
    assert train_main(args) == 0
    rows = [r for r in RunDir(tmp_path / "runs" / "flux").read_metrics() if "reward_mean" in r]
    assert [r["iteration"] for r in rows] == [1, 2]
    for r in rows:
        assert "reward/pickscore" in r and "reward/clip" in r
        assert abs(r["train/first_ratio_mean"] - 1) < 1e-5
    summary = json.loads((tmp_path / "runs" / "flux" / "summary.json").read_text())
    assert "eval/reward/pickscore" in summary["after"]
