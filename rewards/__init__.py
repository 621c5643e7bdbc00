"""Reward models (toy task rewards, HPS v2.1, PickScore, ImageReward, UnifiedReward, CLIP score)
and the reward-server actors that serve them."""
