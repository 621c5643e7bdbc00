"""A whole run with learner.strategy=fsdp over 2 ranks and the collective weight sync, on a local
Ray: sync metrics in metrics.jsonl, a sharded checkpoint, and resuming it on 2 fsdp ranks and on
1 replicated rank reproduces the next iteration."""

import os
import shutil

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")

from mixgrpo_ray.common import checkpoint as ckpt  # noqa: E402
from mixgrpo_ray.config import resolve  # noqa: E402
from mixgrpo_ray.train.training_run import run  # noqa: E402
from tiny_runs import SMALL, rows_of  # noqa: E402

SHARDED = ["learner.strategy=fsdp", "learner.sync_transport=collective", "learner.sync_bucket_mb=0.05",
           "rollout.num_workers=1", "rewards.prompt_following.replicas=1", "data.eval_prompts=2", "run.checkpoint_every=2"]


def _same(a, b, keys):
    assert a["iteration"] == b["iteration"] == 3
    for key, val in a.items():
        if key.startswith(keys):
            assert b[key] == pytest.approx(val, rel=1e-4, abs=1e-6), key


def test_fsdp_collective_run_resumes_on_two_and_one_ranks(local_ray, tmp_path):
    base = [x for x in SMALL if not x.startswith(("rollout.num_workers", "rewards.prompt_following.replicas",
                                                   "run.iterations", "run.checkpoint_every"))] + SHARDED
    assert run(resolve(None, base + ["run.iterations=3", f"run.output_dir={tmp_path}", "run.name=full"])) == 0
    assert run(resolve(None, base + ["run.iterations=2", f"run.output_dir={tmp_path}", "run.name=part"])) == 0
    rows = rows_of(tmp_path / "full")
    for r in rows:  # every sync is measured: 2 learner ranks' shards, bf16 or fp32
        assert r["sync/bytes"] > 0 and r["sync/seconds"] > 0 and r["sync/gbps"] > 0
        assert r["memory/learner_peak_gb"] > 0 and r["memory/rollout_peak_gb"] > 0  # each role's process
    saved = ckpt.latest_checkpoint(tmp_path / "part")
    assert (saved / "sharded" / ".metadata").is_file() and len(list((saved / "sharded").glob("*.distcp"))) == 2
    assert set(ckpt.read_weights(saved))  # eval and sample read it in one process
    shutil.copytree(tmp_path / "part", tmp_path / "part1")
    cfg_file = str(tmp_path / "part" / "config.yaml")
    assert run(resolve([cfg_file], ["run.iterations=3"]), resume=str(tmp_path / "part")) == 0
    _same(rows[2], rows_of(tmp_path / "part")[2], ("reward", "train/", "advantage", "window_start", "weight_version"))
    one = resolve([cfg_file], ["run.iterations=3", "learner.num_workers=1", "learner.strategy=replicate",
                               "learner.sync_transport=object_store"])
    assert run(one, resume=str(tmp_path / "part1")) == 0
    # the loss, ratios and KL of 2 ranks are the whole update's: equal to 1 rank's
    _same(rows[2], rows_of(tmp_path / "part1")[2], ("reward", "train/", "advantage", "window_start"))


def test_learner_ranks_start_in_one_placement_group_or_say_what_is_missing(local_ray):
    from ray.util import placement_group_table

    from mixgrpo_ray.learner.group import LearnerGroup

    cfg = resolve(None, ["model.path=random", "learner.num_workers=2", "learner.num_cpus=0.5"])
    group = LearnerGroup(cfg.model, cfg.optim, cfg.grpo.clip_range, cfg.learner, cfg.run.seed)
    try:
        table = placement_group_table(group.placement)
        assert table["strategy"] == "PACK" and len(table["bundles"]) == 2 and table["state"] == "CREATED"
    finally:
        group.shutdown()
    assert placement_group_table(group.placement)["state"] == "REMOVED"
    bad = resolve(None, ["model.path=random", "learner.num_workers=2", "learner.num_cpus=0.5",
                         "learner.resources={learner_gpu: 1}", "learner.placement_timeout_s=1"])
    with pytest.raises(RuntimeError, match=r"cannot start 2 learner rank\(s\) within 1 s: missing 2 learner_gpu "
                                           r"\(the cluster has 0\)"):
        LearnerGroup(bad.model, bad.optim, bad.grpo.clip_range, bad.learner, bad.run.seed)
