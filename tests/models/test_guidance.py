"""True classifier-free guidance (docs/algorithm.md §1.1): v = v_u + s (v_c - v_u) in one doubled
batch, carried by the trajectory's conditioning so the learner re-evaluates the rollout's own
velocity (ratio 1 before the first update), and counted twice in the NFE."""

import torch

from mixgrpo_ray.algo.rollout import sample_groups, sample_images
from mixgrpo_ray.algo.update import GRPOTrainer, update_assignment
from mixgrpo_ray.config import GRPOConfig, OptimConfig, SamplingConfig
from mixgrpo_ray.models import guidance
from toy_policy import ToyPolicy

PROMPTS = ["a red circle", "a blue square"]


class Counting(ToyPolicy):
    calls: list

    def velocity(self, x, sigma, cond):
        self.calls.append(x.shape[0])
        return super().velocity(x, sigma, cond)


def test_guided_velocity_is_one_doubled_batch_of_the_formula():
    pol = Counting()
    pol.calls = []
    cond = pol.encode_prompts(PROMPTS)
    neg = pol.encode_prompts(["blurry"])
    x, sigma = torch.randn(2, 4, 4, 4), torch.tensor([0.7, 0.3])
    got = guidance.guided_velocity(pol, x, sigma, guidance.with_guidance(cond, neg, 4.5))
    assert pol.calls == [4]  # one evaluation of both halves
    v_c = ToyPolicy.velocity(pol, x, sigma, cond)
    v_u = ToyPolicy.velocity(pol, x, sigma, {k: v.expand(2, *v.shape[1:]) for k, v in neg.items()})
    torch.testing.assert_close(got, v_u + 4.5 * (v_c - v_u))
    assert guidance.with_guidance(cond, neg, 1.0).keys() == cond.keys()  # scale 1: no guidance at all
    assert guidance.passes(cond) == 1


def test_rollout_with_guidance_trains_from_ratio_one_and_counts_both_passes():
    plain = SamplingConfig()
    guided = SamplingConfig(cfg_scale=4.5, negative_prompt="blurry")
    pol = ToyPolicy()
    a = sample_groups(pol, PROMPTS, 3, [0, 1, 2], plain, GRPOConfig(), seed=2)
    b = sample_groups(pol, PROMPTS, 3, [0, 1, 2], guided, GRPOConfig(), seed=2)
    assert b.nfe == 2 * a.nfe and b.passes == 2 and a.passes == 1
    assert not torch.equal(a.trajectory.latents[:, 1], b.trajectory.latents[:, 1])  # guidance changes the samples
    cond = b.trajectory.cond
    assert cond["cfg_scale"].tolist() == [4.5] * 6 and "uncond.emb" in cond
    trainer = GRPOTrainer(pol, OptimConfig(lr=1e-3), clip_range=1e-4)
    stats = trainer.train_iteration(b.trajectory, torch.randn(6), update_assignment(6, 6, 1, seed=0))
    assert abs(stats["first_ratio_mean"] - 1) < 1e-5 and abs(stats["first_ratio_min"] - 1) < 1e-5
    # evaluation images follow the same guidance
    img = sample_images(pol, PROMPTS, [0, 1], num_steps=5, cfg_scale=4.5, negative_prompt="blurry", float_images=True)
    ref = sample_images(pol, PROMPTS, [0, 1], num_steps=5, float_images=True)
    assert not torch.equal(img, ref)
