"""Reward models (HPS v2.1, PickScore, ImageReward, UnifiedReward, CLIP score; the tiny task's
offline rewards live with the tiny model) and the reward-server actors that serve them.

The plug-in API: ``build_reward(kind, **options)`` returns a
:class:`~mixgrpo_ray.models.reward.RewardModel`, called as ``model(images, prompts) -> scores``.
"""

from mixgrpo_ray.models.reward import RewardModel
from mixgrpo_ray.rewards.registry import REWARD_KINDS, build_reward

__all__ = ["REWARD_KINDS", "RewardModel", "build_reward"]
