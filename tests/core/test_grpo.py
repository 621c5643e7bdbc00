"""GRPO advantages and loss (docs/algorithm.md §8–§9) against direct restatements."""

import math

import pytest
import torch

from mixgrpo_ray.core.grpo import group_advantages, grpo_loss


def ref_norm(row):
    m = sum(row) / len(row)
    sd = math.sqrt(sum((r - m) ** 2 for r in row) / (len(row) - 1))
    return [(r - m) / (sd + 1e-8) for r in row]


def test_advantage_aggr_restated():
    g = torch.Generator().manual_seed(0)
    rewards = {"hps": torch.rand(3, 6, generator=g), "pick": 10 * torch.rand(3, 6, generator=g)}
    weights = {"hps": 2.0, "pick": 1.0}
    adv = group_advantages(rewards, weights)
    assert adv.shape == (3, 6) and adv.dtype == torch.float32
    for gi in range(3):
        a = ref_norm(rewards["hps"][gi].tolist())
        b = ref_norm(rewards["pick"][gi].tolist())
        ref = [min(5, max(-5, 2 / 3 * x + 1 / 3 * y)) for x, y in zip(a, b)]
        torch.testing.assert_close(adv[gi], torch.tensor(ref), atol=1e-5, rtol=1e-5)


def test_reward_aggr_restated():
    g = torch.Generator().manual_seed(1)
    rewards = {"a": torch.rand(2, 5, generator=g), "b": torch.rand(2, 5, generator=g)}
    adv = group_advantages(rewards, {"a": 1.0, "b": 3.0}, mode="reward_aggr")
    for gi in range(2):
        total = [0.25 * x + 0.75 * y for x, y in zip(rewards["a"][gi].tolist(), rewards["b"][gi].tolist())]
        torch.testing.assert_close(adv[gi], torch.tensor(ref_norm(total)), atol=1e-5, rtol=1e-5)


def test_default_weights_are_equal():
    rewards = {"a": torch.tensor([[0.0, 1.0, 2.0]]), "b": torch.tensor([[2.0, 0.0, 1.0]])}
    ref = [0.5 * x + 0.5 * y for x, y in zip(ref_norm([0, 1, 2]), ref_norm([2, 0, 1]))]
    torch.testing.assert_close(group_advantages(rewards)[0], torch.tensor(ref), atol=1e-6, rtol=1e-6)


def test_equal_rewards_give_zero_advantages():
    rewards = {"r": torch.tensor([[0.3] * 12, [1.0, 2.0] * 6])}
    adv = group_advantages(rewards)
    assert torch.equal(adv[0], torch.zeros(12))
    assert adv[1].abs().sum() > 0


def test_clip_to_five():
    rewards = {"r": torch.tensor([[0.0] * 99 + [1000.0]])}
    adv = group_advantages(rewards, clip=5.0)
    assert adv.max().item() == 5.0  # unclipped would be ~9.95
    assert adv.min().item() > -5.0


def test_non_finite_reward_raises_naming_it():
    rewards = {"hps": torch.rand(2, 4), "pickscore": torch.tensor([[0.1, float("nan"), 0.2, 0.3], [0.0] * 4])}
    with pytest.raises(ValueError, match="pickscore"):
        group_advantages(rewards)
    rewards["pickscore"][0, 1] = float("inf")
    with pytest.raises(ValueError, match="pickscore"):
        group_advantages(rewards)


def test_failed_scores_excluded_when_marked_invalid():
    r = torch.tensor([[1.0, float("nan"), 3.0, 5.0]])
    adv = group_advantages({"judge": r}, valid={"judge": torch.isfinite(r)})
    ref = ref_norm([1.0, 3.0, 5.0])
    torch.testing.assert_close(adv[0], torch.tensor([ref[0], 0.0, ref[1], ref[2]]), atol=1e-6, rtol=1e-6)


def test_bad_weights_rejected():
    with pytest.raises(ValueError, match="missing"):
        group_advantages({"a": torch.rand(1, 3), "b": torch.rand(1, 3)}, {"a": 1.0})
    with pytest.raises(ValueError):
        group_advantages({"a": torch.rand(1, 3)}, {"a": 0.0})
    with pytest.raises(ValueError, match="mode"):
        group_advantages({"a": torch.rand(1, 3)}, mode="median")


# ---------------------------------------------------------------------------------------------
def ref_loss(new, old, adv, eps):
    total, n = 0.0, 0
    for b in range(len(new)):
        for k in range(len(new[0])):
            r = math.exp(new[b][k] - old[b][k])
            total += max(-adv[b] * r, -adv[b] * min(max(r, 1 - eps), 1 + eps))
            n += 1
    return total / n


def test_grpo_loss_restated():
    g = torch.Generator().manual_seed(2)
    old = torch.randn(6, 4, generator=g)
    new = old + 1e-3 * torch.randn(6, 4, generator=g)  # many ratios outside 1 +- 1e-4
    adv = torch.randn(6, generator=g)
    loss, stats = grpo_loss(new, old, adv, clip_range=1e-4)
    assert loss.item() == pytest.approx(ref_loss(new.tolist(), old.tolist(), adv.tolist(), 1e-4), rel=1e-5)
    ratio = torch.exp(new - old)
    assert stats["clip_fraction"] == pytest.approx(((ratio - 1).abs() > 1e-4).float().mean().item())
    assert stats["approx_kl"] == pytest.approx(0.5 * ((new - old) ** 2).mean().item(), rel=1e-5)
    assert stats["ratio_mean"] == pytest.approx(ratio.mean().item(), rel=1e-6)


def test_grpo_loss_on_policy_ratio_one_and_gradient():
    g = torch.Generator().manual_seed(3)
    logp = torch.randn(5, 4, generator=g, requires_grad=True)
    adv = torch.randn(5, generator=g)
    loss, stats = grpo_loss(logp, logp.detach().clone(), adv)
    assert stats["ratio_mean"] == 1.0 and stats["ratio_min"] == 1.0 and stats["ratio_max"] == 1.0
    assert stats["clip_fraction"] == 0.0 and stats["approx_kl"] == 0.0
    loss.backward()
    # d loss / d logp_new = -A / (number of elements) at ratio 1
    torch.testing.assert_close(logp.grad, (-adv[:, None] / 20).expand(5, 4))


def test_grpo_loss_clipped_branch_has_no_gradient():
    new = torch.tensor([[0.01]], requires_grad=True)  # ratio ~1.01, far outside 1 +- 1e-4
    loss, _ = grpo_loss(new, torch.zeros(1, 1), torch.tensor([1.0]))
    loss.backward()
    assert new.grad.item() == 0.0  # positive advantage, ratio above 1 + eps: clipped
    new2 = torch.tensor([[0.01]], requires_grad=True)
    loss2, _ = grpo_loss(new2, torch.zeros(1, 1), torch.tensor([-1.0]))
    loss2.backward()
    assert new2.grad.item() == pytest.approx(math.exp(0.01))  # negative advantage: unclipped


def test_grpo_loss_shape_errors():
    with pytest.raises(ValueError):
        grpo_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError):
        grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))
