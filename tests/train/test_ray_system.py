"""The actor/learner system on a real local Ray (``ray.init(address="local")``)."""

import json
import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")

from mixgrpo_ray.learner.group import LearnerGroup  # noqa: E402
from mixgrpo_ray.algo.update import update_assignment  # noqa: E402
from mixgrpo_ray.config import resolve  # noqa: E402
from mixgrpo_ray.models.tiny.model import TinyPolicy  # noqa: E402
from mixgrpo_ray.train.training_run import run  # noqa: E402
from tiny_runs import GRIDS, SMALL, rows_of, tiny_batch  # noqa: E402


# the dashboard serves the state API the test reads named actors from (tests/conftest.py)
LOCAL_RAY = {"include_dashboard": True, "dashboard_port": 0}


def test_two_iterations_end_to_end(local_ray, tmp_path):
    cfg = resolve(None, SMALL + GRIDS + [f"run.output_dir={tmp_path}", "run.name=e2e"])
    assert run(cfg) == 0
    run_dir = tmp_path / "e2e"
    rows = rows_of(run_dir)
    assert [r["iteration"] for r in rows] == [1, 2]
    # versions advance, and every rollout of iteration k used the weights published after k-1
    assert [r["weight_version"] for r in rows] == [1, 2]
    assert [r["rollout_versions"] for r in rows] == [[0], [1]]
    for r in rows:
        # on-policy at the first update: the ratio is 1 up to float noise
        assert abs(r["train/first_ratio_max"] - 1) < 1e-5 and abs(r["train/first_ratio_min"] - 1) < 1e-5
        assert r["window_start"] in range(0, 5)
        assert r["nfe/rollout"] == 8 and r["nfe/policy"] == 2
        for key in ("reward_mean", "reward/prompt_following", "reward/quality", "time/iteration_s",
                    "time/rollout_s", "time/reward_s", "time/train_s", "time/sync_s"):
            assert key in r
    assert rows[0]["window_start"] == 0 and rows[1]["window_start"] == 1
    # before/after evaluation, parquet rollouts, checkpoint, curve
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "eval/reward/prompt_following" in summary["before"] and "eval/reward/prompt_following" in summary["after"]
    import pyarrow.parquet as pq

    table = pq.read_table(run_dir / "rollouts" / "iter_000002.parquet")
    assert table.num_rows == 8 and "reward/quality" in table.column_names
    assert (run_dir / "checkpoints" / "iter_000002" / "weights.safetensors").exists()
    assert (run_dir / "reward_curve.png").exists()
    from PIL import Image

    for name in ("iter_000000.png", "iter_000002.png"):  # held-out grids before and after
        assert Image.open(run_dir / "grids" / name).size[0] > 64
    # the named actors were there (the state API keeps dead actors)
    from ray.util.state import list_actors

    names = {a.name for a in list_actors(address=ray.get_runtime_context().gcs_address, limit=1000)}
    for name in ("mixgrpo/rollout/0", "mixgrpo/rollout/1", "mixgrpo/reward/prompt_following/0",
                 "mixgrpo/reward/prompt_following/1", "mixgrpo/reward/quality/0",
                 "mixgrpo/learner/0", "mixgrpo/learner/1"):
        assert name in names


def _train_with(num_learners, traj_ref, adv, plan_seed=0, sizes=None):
    cfg = resolve(None, ["model.path=random", f"learner.num_workers={num_learners}", "learner.num_cpus=0.5",
                         "optim.samples_per_update=4", "optim.lr=1e-3", "grpo.group_size=4",
                         "data.prompts_per_iteration=2"])
    group = LearnerGroup(cfg.model, cfg.optim, cfg.grpo.clip_range, cfg.learner, cfg.run.seed)
    try:
        assert group.assignment(8, plan_seed) == update_assignment(8, 4, num_learners, seed=cfg.run.seed * 7 + plan_seed)
        refs = traj_ref if isinstance(traj_ref, list) else [traj_ref]
        stats = group.train(refs, adv, plan_seed, sizes=sizes)
        state = ray.get(group.actors[0].trainable_state.remote())
        others = ray.get([w.trainable_state.remote() for w in group.actors[1:]])
        return stats, state, others, group
    except Exception:
        group.shutdown()
        raise


def test_two_learners_equal_one_learner(local_ray):
    """Two ranks, each handed and fetching only the rollout calls that hold its samples, train
    as one rank on the whole iteration."""
    traj, adv = tiny_batch()
    ref = ray.put(traj)
    stats1, state1, _, g1 = _train_with(1, ref, adv)
    g1.shutdown()
    calls = [ray.put(traj.select([i])) for i in range(len(traj))]  # 8 rollout calls of one image each
    stats2, state2, others, g2 = _train_with(2, calls, adv, sizes=[1] * len(calls))
    try:
        fetched = [set(ray.get(w.fetched_ids.remote())) for w in g2.actors]
        everything = {c.hex() for c in calls}
        assert fetched[0] < everything and fetched[1] < everything  # strict subsets
        assert fetched[0].isdisjoint(fetched[1]) and fetched[0] | fetched[1] == everything
        plan = g2.assignment(len(adv), 0)
        for rank, ids in enumerate(fetched):
            assert ids == {calls[i].hex() for per_rank in plan for i in per_rank[rank]}
        assert stats1["updates"] == stats2["updates"] == 2
        # every statistic is the whole update's, not rank 0's share
        for key in ("loss", "ratio_mean", "ratio_min", "ratio_max", "clip_fraction", "approx_kl", "grad_norm",
                    "first_ratio_mean", "first_ratio_min", "first_ratio_max"):
            assert stats2[key] == pytest.approx(stats1[key], rel=1e-4, abs=1e-7), key
        moved = False
        init = TinyPolicy(seed=0).trainable_state_dict()
        for k in state1:
            torch.testing.assert_close(state2[k], state1[k], atol=2e-6, rtol=1e-5)
            torch.testing.assert_close(others[0][k], state2[k], atol=0, rtol=0)  # ranks stay identical
            moved |= not torch.equal(state1[k], init[k])
        assert moved
        # stale rollouts are refused after a publish, unless an off-policy bound allows them
        (version, refs), _ = g2.get_all("publish", True)
        assert version == 1 and len(refs) >= 1
        with pytest.raises(ray.exceptions.RayTaskError, match="refusing the stale batch"):
            g2.train([ref], adv, 1)
        g2.max_staleness = 1
        g2.train([ref], adv, 1)
    finally:
        g2.shutdown()


def test_publish_dtype_bf16_halves_the_broadcast(local_ray):
    from mixgrpo_ray.cluster.weight_sync import WeightReceiver
    from mixgrpo_ray.learner.worker import LearnerWorker

    for dtype, expect in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        cfg = resolve(None, ["model.path=random", f"learner.publish_dtype={dtype}"])
        worker = LearnerWorker(0, 1, cfg.model, cfg.optim, cfg.grpo.clip_range, cfg.learner, cfg.run.seed)  # in-process
        worker.init_process_group("", 0)
        version, refs = worker.publish()
        assert version == 1 and all(b.spec.torch_dtype == expect for b in refs)
        pol = TinyPolicy(seed=1)
        WeightReceiver().load(version, refs, pol.trainable_tensors())  # a rollout policy accepts either
        sent = worker.trainable_state()
        assert all(torch.equal(pol.trainable_state_dict()[k], v.to(expect).float()) for k, v in sent.items())
        assert sum(b.spec.nbytes for b in refs) == sum(v.numel() for v in sent.values()) * expect.itemsize
