"""User-defined rewards for the ``kind: python`` tests: what a user writes in their own module."""

import torch

from mixgrpo_ray.models.reward import RewardModel


def words(images, prompts, per_word=1.0):
    """A function reward: ``per_word`` times the prompt's word count (it depends on the prompt only,
    so a test can recompute it)."""
    return [per_word * len(p.split()) for p in prompts]


class Brightness:
    """A plain class reward: mean pixel value times ``scale``."""

    def __init__(self, scale=1.0):
        self.scale = scale

    def __call__(self, images, prompts):
        return images.mean(dim=(1, 2, 3)) * self.scale


class Judge(RewardModel):
    """A RewardModel subclass that may fail (NaN for prompts containing ``fail_word``)."""

    can_fail = True
    score_range = (0.0, 1.0)

    def __init__(self, fail_word="circle"):
        self.fail_word = fail_word

    def score(self, images, prompts):
        return torch.tensor([float("nan") if self.fail_word in p else 0.5 for p in prompts])


NOT_CALLABLE = 3
