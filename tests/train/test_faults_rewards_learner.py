"""Reward replicas that hang or die, a reward pool that stays down, non-finite scores, and a learner
rank killed by PID: each injected for real on a local Ray."""

import os
import signal
import threading
import time

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")

from mixgrpo_ray.config import resolve  # noqa: E402
from mixgrpo_ray.train.recovery import RunStopped  # noqa: E402
from mixgrpo_ray.train.run_dir import RunDir  # noqa: E402
from mixgrpo_ray.train.training_run import run  # noqa: E402
from tiny_runs import FAST as ROLLOUT_FAST  # noqa: E402
from tiny_runs import baseline, comparable  # noqa: E402

FAST = ROLLOUT_FAST + [  # later overrides win: smaller, one rollout actor, two quality replicas
    "data.prompts_per_iteration=2", "data.eval_prompts=2", "sampling.num_steps=8", "rollout.num_workers=1",
    "rewards.quality.replicas=2", "run.checkpoint_every=1", "run.iterations=8",
]


def rows(run_dir):
    return [r for r in RunDir(run_dir).read_metrics() if "reward_mean" in r]


def total(run_dir, kind):
    return sum(r[f"faults/{kind}"] for r in rows(run_dir))


def when_logged(run_dir, iteration, action):
    def go():
        while not any(r["iteration"] >= iteration for r in rows(run_dir)):
            time.sleep(0.01)
        action()
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def kill_actor(name):
    """SIGKILL the process of actor ``name``; returns its PID."""
    actor = ray.get_actor(name, namespace="mixgrpo")
    pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))
    os.kill(pid, signal.SIGKILL)
    return pid


def test_hung_and_killed_replicas_leave_metrics_identical(local_ray, tmp_path):
    clean = baseline(tmp_path, FAST)
    common = FAST + [f"run.output_dir={tmp_path}"]
    once = tmp_path / "hung_once"
    hang = f"rewards.quality.options._inject={{hang_s: 120, hang_replica: 0, hang_once_file: {once}}}"
    # a replica that hangs: the request times out and goes to the other replica
    assert run(resolve(None, common + ["run.name=hung", hang, "rewards.quality.timeout_s=2"])) == 0
    assert total(tmp_path / "hung", "reward_timeout") == 1
    # a replica killed by PID while it scores: the request goes to the other replica
    once.unlink()
    killed = []

    def kill_hanging():
        while not once.exists() or not once.read_text():
            time.sleep(0.01)
        killed.append(int(once.read_text()))
        os.kill(killed[0], signal.SIGKILL)
    t = threading.Thread(target=kill_hanging, daemon=True)
    t.start()
    assert run(resolve(None, common + ["run.name=killed", hang])) == 0
    t.join(5)
    assert killed and total(tmp_path / "killed", "reward_retry") >= 1  # every request queued on it
    for name in ("hung", "killed"):
        assert comparable(tmp_path / name) == clean


def test_replica_dead_for_good_leaves_the_rotation(local_ray, tmp_path):
    """A replica killed with its restarts used up: the requests it held go to the other replica once,
    and it gets no more (not one failed request per iteration); the metrics are unchanged."""
    clean = baseline(tmp_path, FAST)
    pids = []

    t = when_logged(tmp_path / "dead", 2, lambda: pids.append(kill_actor("mixgrpo/reward/quality/1")))
    assert run(resolve(None, FAST + [f"run.output_dir={tmp_path}", "run.name=dead",
                                     "rewards.quality.max_restarts=0"])) == 0
    t.join(5)
    assert pids, "the replica was not killed"
    assert 1 <= total(tmp_path / "dead", "reward_retry") <= 2  # what it held when it died, at most
    assert comparable(tmp_path / "dead") == clean


def test_pool_down_stops_with_checkpoint_then_resumes(local_ray, tmp_path):
    clean = baseline(tmp_path, FAST)
    common = FAST + [f"run.output_dir={tmp_path}"]  # every replica of the pool hangs
    down = tmp_path / "pool_is_down"
    cfg = resolve(None, common + ["run.name=down", "run.checkpoint_every=0", "rewards.quality.timeout_s=1",
                                  "rewards.quality.max_down_s=3",
                                  f"rewards.quality.options._inject={{hang_s: 120, hang_while_file: {down}}}"])
    when_logged(tmp_path / "down", 1, down.touch)
    with pytest.raises(RunStopped, match=r"reward pool 'quality' .* has not answered .*--resume"):
        run(cfg)
    stopped_at = len(rows(tmp_path / "down"))
    assert (tmp_path / "down" / "checkpoints" / f"iter_{stopped_at:06d}" / "state.json").exists()
    assert stopped_at < 8
    down.unlink()
    assert run(cfg, resume=str(tmp_path / "down")) == 0
    assert total(tmp_path / "down", "reward_timeout") == 0  # rows of the stopped iteration were not kept
    assert comparable(tmp_path / "down")[1:] == clean[1:]


def test_nonfinite_scores_dropped_and_counted_or_stop(local_ray, tmp_path):
    common = FAST + [f"run.output_dir={tmp_path}", "run.iterations=2", "run.checkpoint_every=0"]
    assert run(resolve(None, common + ["run.name=nan", "rewards.quality.options._inject={nan_every: 2}"])) == 0
    for r in rows(tmp_path / "nan"):
        assert r["faults/nonfinite_reward"] == 4  # half of 8 images
        assert r["reward/quality"] == r["reward/quality"]  # the mean over finite scores is a number
    from mixgrpo_ray.train.faults import FaultLog
    from mixgrpo_ray.train.recovery import check_finite

    log = FaultLog()
    all_nan = {"quality": torch.full((8,), float("nan")), "prompt_following": torch.ones(8)}
    with pytest.raises(RunStopped, match="reward 'quality' returned no finite score"):
        check_finite(all_nan, {"quality": 0.5, "prompt_following": 1.0}, log)
    check_finite(all_nan, {"prompt_following": 1.0}, log)  # a reward that is only logged may fail
    assert log.take()["faults/nonfinite_reward"] == 16


def test_killed_learner_rank_is_healed_with_identical_metrics(local_ray, tmp_path):
    """The learner killed by PID mid-run: the run re-forms the group from its last checkpoint by
    itself, redoes the iteration since, and finishes with an uninterrupted run's metrics (two
    ranks: tests/train/test_node_loss.py and, colocated under fsdp, tests/train/test_colocated_run.py)."""
    clean = baseline(tmp_path, FAST)
    killed: list = []
    t = when_logged(tmp_path / "healed", 3, lambda: killed.append(kill_actor("mixgrpo/learner/0")))
    assert run(resolve(None, FAST + [f"run.output_dir={tmp_path}", "run.name=healed"])) == 0
    t.join(5)
    assert killed, "the learner was not killed"
    healed = rows(tmp_path / "healed")
    assert [r["iteration"] for r in healed] == list(range(1, 9))  # the rows redone replace those dropped
    assert sum(r["faults/learner_restart"] for r in healed) == 1
    assert comparable(tmp_path / "healed") == clean


def test_lost_learner_group_is_reformed_until_max_restarts_then_stops(local_ray, tmp_path):
    """Before any checkpoint, a lost rank's group is re-formed from the initial weights (new
    processes, version 0, the run back at iteration 0); once ``learner.max_restarts`` re-formings
    are used, the run stops in one line naming the rank, the checkpoint state and the resume
    command."""
    from mixgrpo_ray.train.driver import Driver
    from mixgrpo_ray.train.recovery import GroupReformed, stop_cleanly

    cfg = resolve(None, FAST + ["learner.num_workers=2", "optim.samples_per_update=4", "learner.max_restarts=1"])
    driver = Driver(cfg, RunDir.create(str(tmp_path), "first"))
    try:
        first = kill_actor("mixgrpo/learner/1")
        with pytest.raises(GroupReformed, match=r"re-formed from the initial weights .*re-forming 1 of "
                                                r"learner.max_restarts=1.*iterations from 1 are redone"):
            with stop_cleanly(driver, heal=True):
                driver.broadcast(bump=False)
        assert driver.faults.take()["faults/learner_restart"] == 1
        assert (driver.iteration, driver.version, driver.learner_restarts) == (0, 0, 1)
        pids = [ray.get(a.__ray_call__.remote(lambda self: os.getpid())) for a in driver.learners.actors]
        assert first not in pids and len(set(pids)) == 2
        assert driver.broadcast(bump=False) == 0  # the new group serves the rollout actors
        kill_actor("mixgrpo/learner/0")
        with pytest.raises(RunStopped, match=r"mixgrpo/learner/0 failed: its process died.*\(learner.max_restarts=1: "
                                             r"no re-forming left\), no checkpoint was written yet.*--resume"):
            with stop_cleanly(driver, heal=True):
                driver.broadcast(bump=False)
    finally:
        driver.shutdown()


def test_nonfinite_loss_update_is_dropped_and_counted():
    from mixgrpo_ray.algo.rollout import sample_groups
    from mixgrpo_ray.algo.update import GRPOTrainer, update_assignment
    from mixgrpo_ray.config import GRPOConfig, OptimConfig, SamplingConfig
    from mixgrpo_ray.train.faults import FaultLog
    from mixgrpo_ray.train.recovery import check_finite_loss
    from toy_policy import ToyPolicy

    pol = ToyPolicy()
    out = sample_groups(pol, ["a red circle", "a blue square"], 4, [0, 1], SamplingConfig(num_steps=8), GRPOConfig(), seed=0)
    before = {k: v.clone() for k, v in pol.trainable_state_dict().items()}
    adv = torch.randn(8, generator=torch.Generator().manual_seed(1))
    adv[5] = float("nan")  # one bad sample: left out of its update's loss, the rest of it applied
    plan = update_assignment(8, 4, 1, seed=0)
    stats = GRPOTrainer(pol, OptimConfig(lr=1e-2), clip_range=1e-4).train_iteration(out.trajectory, adv, plan)
    assert stats["nonfinite_samples"] == 1
    after = pol.trainable_state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    # the same as training on the plan without sample 5 (its update is the mean over the other three)
    ref = ToyPolicy()
    ref.load_trainable_state_dict(before)
    without = [[[i for i in ranks[0] if i != 5]] for ranks in plan]
    ref_stats = GRPOTrainer(ref, OptimConfig(lr=1e-2), clip_range=1e-4).train_iteration(out.trajectory, adv, without)
    assert ref_stats["nonfinite_samples"] == 0
    for k, v in ref.trainable_state_dict().items():
        torch.testing.assert_close(after[k], v, rtol=1e-5, atol=1e-7)
    # a sample whose recorded log-prob is not finite is left out the same way
    bad_traj = out.trajectory.select(list(range(8)))
    bad_traj.log_probs[2, 0] = float("inf")
    pol2 = ToyPolicy()
    pol2.load_trainable_state_dict(before)
    st2 = GRPOTrainer(pol2, OptimConfig(lr=1e-2), clip_range=1e-4).train_iteration(bad_traj, torch.ones(8), plan)
    assert st2["nonfinite_samples"] == 1 and all(torch.isfinite(v).all() for v in pol2.trainable_state_dict().values())
    log = FaultLog()
    check_finite_loss(stats, 8, log)
    assert log.take()["faults/nonfinite_loss"] == 1
    with pytest.raises(RunStopped, match="every update of the iteration had a non-finite loss"):
        check_finite_loss({"nonfinite_samples": 8.0}, 8, log)
