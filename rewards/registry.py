"""Build reward models by kind name from config options.

Each entry maps a reward *kind* (what the model is) to ``"module:Class"``; the class is
imported only when used, so a run pays only for the reward models it configures. Constructors
take the reward's config options as keyword arguments.
"""

from __future__ import annotations

import importlib
from typing import Any

from mixgrpo_ray.models.reward import RewardModel

REWARD_KINDS: dict[str, str] = {
    # offline rewards of the embedded tiny task
    "prompt_following": "mixgrpo_ray.models.tiny.rewards:PromptFollowingReward",
    "quality": "mixgrpo_ray.models.tiny.rewards:QualityReward",
    "object_size": "mixgrpo_ray.models.tiny.rewards:ObjectSizeReward",  # a diagnostic: use weight 0
    # offline rewards of the embedded tiny model's "pairs" task
    "pair_following": "mixgrpo_ray.models.tiny.pairs_rewards:PairFollowingReward",
    "pair_layout": "mixgrpo_ray.models.tiny.pairs_rewards:PairLayoutReward",  # a diagnostic: use weight 0
    # real human-preference rewards (transformers-only implementations)
    "hps": "mixgrpo_ray.rewards.hps:HPSv21Reward",
    "pickscore": "mixgrpo_ray.rewards.pickscore:PickScoreReward",
    "clip": "mixgrpo_ray.rewards.clip_score:CLIPScoreReward",
    "imagereward": "mixgrpo_ray.rewards.imagereward:ImageRewardReward",
    "unifiedreward": "mixgrpo_ray.rewards.unified.unifiedreward:UnifiedRewardReward",
    # the user's own class or function, named by the option ``target`` (package.module:Name)
    "python": "mixgrpo_ray.rewards.custom:PythonReward",
}


def reward_class(kind: str) -> type[RewardModel]:
    """The class implementing reward ``kind`` (raises ``ValueError`` for an unknown kind)."""
    try:
        target = REWARD_KINDS[kind]
    except KeyError:
        raise ValueError(
            f"unknown reward kind {kind!r}; choose one of: {', '.join(sorted(REWARD_KINDS))}"
        ) from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_reward(kind: str, **options: Any) -> RewardModel:
    """Instantiate reward ``kind`` with its config ``options``."""
    return reward_class(kind)(**options)
