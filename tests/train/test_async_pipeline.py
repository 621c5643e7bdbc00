"""run.pipeline=async: the next iteration samples while the learner trains; with
learner.max_staleness=0 it is exactly the synchronous pipeline."""

import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")

from mixgrpo_ray.config import ConfigError, resolve  # noqa: E402

SMALL = ["data.eval_prompts=2", "data.prompts_per_iteration=2", "grpo.group_size=4", "optim.samples_per_update=4",
         "rollout.num_workers=1", "rollout.num_cpus=0.5", "rewards.prompt_following.num_cpus=0.25",
         "rewards.quality.num_cpus=0.25", "learner.num_cpus=0.5", "run.log_rollouts=false",
         "run.checkpoint_every=0", "run.iterations=3", "optim.lr=1e-3"]


def rows_of(cfg, tmp_path, name):
    from mixgrpo_ray.train.driver import Driver
    from mixgrpo_ray.train.run_dir import RunDir

    driver = Driver(cfg, RunDir.create(str(tmp_path), name))
    try:
        driver.broadcast(bump=False)
        rows = []
        driver.train_until(3, rows.append)
        return rows
    finally:
        driver.shutdown()


def test_async_with_staleness_zero_equals_sync(local_ray, tmp_path):
    sync = rows_of(resolve(["tiny"], SMALL), tmp_path, "sync")
    asyn = rows_of(resolve(["tiny"], SMALL + ["run.pipeline=async", "learner.max_staleness=0"]), tmp_path, "async0")
    for a, b in zip(sync, asyn):
        for key, val in a.items():
            if not key.startswith(("time/", "sync/seconds", "sync/gbps", "memory/")) and key != "images_per_second":
                assert b[key] == val, key


def test_async_samples_ahead_with_the_decoupled_objective(local_ray, tmp_path):
    rows = rows_of(resolve(["tiny"], SMALL + ["run.pipeline=async", "learner.max_staleness=1"]), tmp_path, "async1")
    # iteration 1 samples with v0; 2 and 3 were sampled while the learner trained the one before
    assert [r["rollout_versions"] for r in rows] == [[0], [0], [1]]
    assert [r["weight_version"] for r in rows] == [1, 2, 3]
    assert "train/importance_weight_mean" not in rows[0]
    for r in rows[1:]:
        w = r["train/importance_weight_mean"]
        assert 0 < w <= 2.0 and w != 1.0
        assert r["train/first_ratio_mean"] == pytest.approx(1.0, abs=1e-4)  # clip acts on new / proximal


def test_decoupled_loss_is_the_plain_loss_times_the_weight():
    from mixgrpo_ray.core.grpo import grpo_loss

    g = torch.Generator().manual_seed(0)
    new, prox, adv = torch.randn(6, 3, generator=g) * 1e-3, torch.randn(6, 3, generator=g) * 1e-3, torch.randn(6, generator=g)
    w = torch.rand(6, 3, generator=g) * 2
    loss, _ = grpo_loss(new, prox, adv, 1e-4, importance_weight=w)
    r = torch.exp(new - prox)
    ref = (torch.maximum(-adv[:, None] * r, -adv[:, None] * r.clamp(1 - 1e-4, 1 + 1e-4)) * w).mean()
    torch.testing.assert_close(loss, ref)


def test_pipeline_is_validated():
    with pytest.raises(ConfigError, match="run.pipeline"):
        resolve(["tiny"], ["run.pipeline=sometimes"])
    with pytest.raises(ConfigError, match="max_importance_weight"):
        resolve(["tiny"], ["grpo.max_importance_weight=0.5"])
