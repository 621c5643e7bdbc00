"""Rollout recording and the learner's GRPO update, without Ray (ToyPolicy)."""

import copy
import dataclasses

import pytest
import torch

from mixgrpo_ray.algo.update import GRPOTrainer, rank_shares, update_assignment
from mixgrpo_ray.config import GRPOConfig, OptimConfig, SamplingConfig
from mixgrpo_ray.algo.rollout import sample_groups, sample_images
from mixgrpo_ray.core.schedule import sigma_schedule
from mixgrpo_ray.core.steps import sde_log_prob, sde_mean_std
from mixgrpo_ray.core.trajectory import Trajectory
from toy_policy import ToyPolicy

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def test_sample_groups_records_window_and_shares_group_noise():
    pol = ToyPolicy()
    out = sample_groups(pol, PROMPTS, 4, [3, 4, 5, 6], SamplingConfig(), GRPOConfig(), seed=1, version=7)
    tr = out.trajectory
    assert out.images.shape == (12, 3, 4, 4) and out.images.dtype == torch.uint8
    assert tr.latents.shape == (12, 4, 4, 4, 4) and tr.latents.dtype == torch.float32
    assert tr.steps[0].tolist() == [3, 4, 5, 6] and tr.version == 7
    assert tr.prompts == [p for p in PROMPTS for _ in range(4)]
    sig = sigma_schedule(25, 3.0)
    assert torch.allclose(tr.sigmas[0], sig[3:7]) and torch.allclose(tr.sigmas_next[0], sig[4:8])
    # before the window everything is ODE from one shared noise: a group's inputs at step 3 are equal
    assert torch.equal(tr.latents[0, 0], tr.latents[3, 0])
    assert not torch.equal(tr.latents[0, 0], tr.latents[4, 0])
    # after the first SDE step the group members differ
    assert not torch.equal(tr.latents[0, 1], tr.latents[1, 1])
    # the recorded log-probs are those of the recorded transitions under the same weights
    cond = {k: v.repeat_interleave(4, 0) for k, v in pol.encode_prompts(PROMPTS).items()}
    with torch.no_grad():
        v = pol.velocity(tr.latents[:, 2], tr.sigmas[:, 2], cond)
    mean, std = sde_mean_std(tr.latents[:, 2], v, tr.sigmas[:, 2], tr.sigmas_next[:, 2], 0.7)
    torch.testing.assert_close(sde_log_prob(tr.next_latents[:, 2], mean, std), tr.log_probs[:, 2], atol=1e-5, rtol=1e-6)
    # determinism
    again = sample_groups(pol, PROMPTS, 4, [3, 4, 5, 6], SamplingConfig(), GRPOConfig(), seed=1)
    assert torch.equal(again.images, out.images)


def test_independent_noise_option():
    out = sample_groups(ToyPolicy(), PROMPTS[:1], 3, [0, 1], SamplingConfig(share_group_noise=False), GRPOConfig(), seed=2)
    assert not torch.equal(out.trajectory.latents[0, 0], out.trajectory.latents[1, 0])


def test_dance_rollout_keeps_a_random_sixty_percent_per_sample():
    s, g = SamplingConfig(sde_kind="dance_grpo", noise_level=0.3), GRPOConfig(algorithm="dancegrpo")
    out = sample_groups(ToyPolicy(), PROMPTS[:2], 3, [0], s, g, seed=3)
    tr = out.trajectory
    assert out.nfe == 25 and tr.num_trained_steps == 14
    assert (tr.steps < 24).all()
    assert all(len(set(row.tolist())) == 14 for row in tr.steps)
    assert len({tuple(r.tolist()) for r in tr.steps}) > 1  # differs per sample


def test_sample_images_independent_of_batching():
    pol = ToyPolicy()
    both = sample_images(pol, PROMPTS[:2], [5, 6], num_steps=10)
    one = sample_images(pol, PROMPTS[1:2], [6], num_steps=10)
    assert torch.equal(both[1], one[0])


def test_update_plan_deals_every_sample_once():
    plan = update_assignment(24, 6, 2, seed=0)
    assert len(plan) == 4 and all(len(r) == 2 and len(r[0]) == 3 for r in plan)
    flat = sorted(i for u in plan for r in u for i in r)
    assert flat == list(range(24))
    one = update_assignment(24, 6, 1, seed=0)
    assert [sorted(u[0]) for u in one] == [sorted(u[0] + u[1]) for u in plan]
    with pytest.raises(ValueError):
        update_assignment(24, 5, 1, seed=0)


def _batch(seed=1):
    pol = ToyPolicy()
    out = sample_groups(pol, PROMPTS, 4, [0, 1, 2, 3], SamplingConfig(), GRPOConfig(), seed=seed)
    adv = torch.randn(12, generator=torch.Generator().manual_seed(seed))
    return pol, out.trajectory, adv


def test_first_update_ratio_is_one_and_training_moves_weights():
    pol, traj, adv = _batch()
    before = copy.deepcopy(pol.trainable_state_dict())
    trainer = GRPOTrainer(pol, OptimConfig(lr=1e-3), clip_range=1e-4)
    stats = trainer.train_iteration(traj, adv, update_assignment(12, 6, 1, seed=0))
    assert abs(stats["first_ratio_mean"] - 1) < 1e-5
    assert abs(stats["first_ratio_max"] - 1) < 1e-5 and abs(stats["first_ratio_min"] - 1) < 1e-5
    assert stats["updates"] == 2
    after = pol.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_gradient_is_minus_advantage_times_grad_logp_on_policy():
    """On-policy, d loss / d theta = -mean_{b,j} A_b * d logp_{b,j} / d theta (ratio 1)."""
    pol, traj, adv = _batch(2)
    trainer = GRPOTrainer(pol, OptimConfig.model_construct(lr=0.0, weight_decay=0.0, max_grad_norm=1e9), clip_range=1e-4)
    params = list(pol.trainable_parameters())
    # reference gradient by the formula, from scratch
    cond = {k: v for k, v in pol.encode_prompts(traj.prompts).items()}
    total = 0
    for j in range(traj.num_trained_steps):
        total = total + (adv * trainer.step_log_probs(traj, cond, j)).sum()
    ref = torch.autograd.grad(-total / (len(adv) * traj.num_trained_steps), params)
    # the trainer's gradient (capture before the optimizer step zeroes it)
    grads = {}
    orig_step = trainer.optimizer.step

    def capture():
        for i, p in enumerate(params):
            grads[i] = p.grad.clone()
        orig_step()

    trainer.optimizer.step = capture
    trainer.train_iteration(traj, adv, [[list(range(12))]])
    for i, g in enumerate(ref):
        torch.testing.assert_close(grads[i], g, atol=1e-6, rtol=1e-4)


def test_trajectory_select_and_concat():
    _, traj, _ = _batch()
    a, b = traj.select([0, 1, 2]), traj.select([3, 4])
    c = Trajectory.concat([a, b])
    assert len(c) == 5 and torch.equal(c.latents, traj.latents[:5])
    assert c.prompts == traj.prompts[:5]
    # the prompt conditioning travels with its rows
    assert set(c.cond) == set(traj.cond) and all(torch.equal(c.cond[k], traj.cond[k][:5]) for k in traj.cond)
    d = traj.select([4, 0])
    assert all(torch.equal(d.cond[k], traj.cond[k][[4, 0]]) for k in traj.cond)
    with pytest.raises(ValueError, match="with and without prompt conditioning"):
        Trajectory.concat([a, dataclasses.replace(b, cond=None)])
    assert Trajectory.concat([dataclasses.replace(a, cond=None), dataclasses.replace(b, cond=None)]).cond is None


def test_rollout_records_each_rows_prompt_conditioning():
    """One row of ``cond`` per image: its prompt's encoding (the toy policy's keeps its dtype)."""
    pol, traj, _ = _batch()
    enc = pol.encode_prompts(traj.prompts)
    assert set(traj.cond) == set(enc)
    for k in enc:
        assert traj.cond[k].dtype == enc[k].dtype and traj.cond[k].device.type == "cpu"
        assert torch.equal(traj.cond[k], enc[k])


def test_rank_shares_name_only_the_calls_holding_a_ranks_samples():
    plan = update_assignment(12, 6, 2, seed=3)
    sizes = [3, 1, 4, 4]  # four rollout calls: samples 0-2, 3, 4-7, 8-11
    shares = rank_shares(plan, sizes)
    starts = [0, 3, 4, 8]
    for rank, share in enumerate(shares):
        mine = sorted(i for per_rank in plan for i in per_rank[rank])
        assert share.samples == mine
        # the local rows, call by call, are exactly the rank's samples in order
        assert [starts[c] + r for c, rows in zip(share.calls, share.rows) for r in rows] == mine
        assert all(rows for rows in share.rows) and share.calls == sorted(set(share.calls))
        # every update indexes the same samples, in the plan's order
        assert [[share.samples[i] for i in upd] for upd in share.updates] == [list(p[rank]) for p in plan]
    # one call per sample: a rank fetches only half of them
    ones = rank_shares(plan, [1] * 12)
    assert sorted(ones[0].calls + ones[1].calls) == list(range(12)) and len(ones[0].calls) == 6
    with pytest.raises(ValueError, match="the rollout calls hold 10"):
        rank_shares(plan, [5, 5])


def test_training_on_a_share_equals_training_on_the_whole_iteration():
    """A rank's local trajectory (only the calls holding its samples) trains exactly as the whole one."""
    pol_a, traj, adv = _batch()
    pol_b = copy.deepcopy(pol_a)
    plan = update_assignment(12, 6, 2, seed=1)
    calls = [traj.select(range(0, 5)), traj.select(range(5, 12))]
    share = rank_shares(plan, [5, 7])[1]
    mine = Trajectory.concat([calls[c].select(rows) for c, rows in zip(share.calls, share.rows)])
    optim = OptimConfig(lr=1e-3)
    whole = GRPOTrainer(pol_a, optim, clip_range=1e-4, rank=1, world_size=2)
    whole.world_size = 1  # no process group here: compare one rank's own update
    local = GRPOTrainer(pol_b, optim, clip_range=1e-4, rank=1, world_size=1)
    stats_a = whole.train_iteration(traj, adv, plan)
    stats_b = local.train_updates(mine, adv[share.samples], share.updates)
    assert stats_a == stats_b
    a, b = pol_a.trainable_state_dict(), pol_b.trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_learner_holds_no_text_encoder_and_trains_on_the_carried_cond():
    """The tiny model's text encoder is frozen (RL trains the transformer), so its learner drops it
    and trains on the rollout's recorded conditioning: the same values the learner would encode, up
    to the encoder's batch-size dependent float rounding (the rollout encodes a call's distinct
    prompts, the learner encoded an update's rows), so the same update within float tolerance."""
    from mixgrpo_ray.config import resolve
    from mixgrpo_ray.models.build import build_policy
    from mixgrpo_ray.models.tiny import task

    cfg = resolve(None, [])
    actor = build_policy(cfg.model, trainable=False)
    learner = build_policy(cfg.model, trainable=True)
    assert actor.text_encoder is not None and learner.text_encoder is None
    assert {id(p) for p in learner.trainable_parameters()} == {id(p) for p in learner.transformer.parameters()}
    with pytest.raises(RuntimeError, match="holds no text encoder"):
        learner.encode_prompts(["a small red circle on a white background, center"])
    out = sample_groups(actor, task.eval_prompts()[:4], 3, [0, 1], SamplingConfig(num_steps=6), GRPOConfig(), seed=2)
    adv = torch.randn(12, generator=torch.Generator().manual_seed(0))
    plan = update_assignment(12, 6, 1, seed=0)
    for idx in [p[0] for p in plan]:
        rows = out.trajectory.select(idx)
        enc = actor.encode_prompts(rows.prompts)
        for k in enc:
            torch.testing.assert_close(rows.cond[k], enc[k], rtol=1e-5, atol=2e-6)
    encoding = build_policy(cfg.model, trainable=False)  # a learner that still encodes (the old way)
    stats_enc = GRPOTrainer(encoding, OptimConfig(lr=1e-3), clip_range=1e-4).train_iteration(
        dataclasses.replace(out.trajectory, cond=None), adv, plan)
    stats = GRPOTrainer(learner, OptimConfig(lr=1e-3), clip_range=1e-4).train_iteration(out.trajectory, adv, plan)
    assert stats.keys() == stats_enc.keys()
    for key, val in stats_enc.items():
        assert stats[key] == pytest.approx(val, rel=1e-4, abs=1e-7), key
    a, b = learner.trainable_state_dict(), encoding.trainable_state_dict()
    for k in a:  # two Adam steps of lr 1e-3 moved the weights by ~2e-3
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_shared_prefix_shortcut_equals_full_group_rollout():
    """With shared group noise the pre-window ODE runs once per prompt; the result must equal
    running it for every member of the group."""
    from mixgrpo_ray.models.policy import cond_repeat
    from mixgrpo_ray.core.mixed_rollout import mixed_rollout

    pol = ToyPolicy()
    out = sample_groups(pol, PROMPTS[:2], 3, [5, 6, 7], SamplingConfig(), GRPOConfig(), seed=4)
    gen = torch.Generator().manual_seed(4)
    x = pol.initial_noise(2, gen).repeat_interleave(3, dim=0)
    cond = cond_repeat(pol.encode_prompts(PROMPTS[:2]), 3)
    with torch.no_grad():
        ref = mixed_rollout(lambda x, s: pol.velocity(x, s, cond), x, sigma_schedule(25, 3.0), [5, 6, 7],
                            noise_level=0.7, generator=gen)
    assert out.nfe == ref.nfe == 25
    for j, rec in enumerate(ref.records):
        torch.testing.assert_close(out.trajectory.latents[:, j], rec.x, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.trajectory.log_probs[:, j], rec.log_prob, atol=1e-4, rtol=1e-5)
