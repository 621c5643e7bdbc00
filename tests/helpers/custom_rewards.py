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


def side(images, prompts):
    """A function reward that declares its input: the width of the images it receives."""
    return [float(images.shape[-1])] * len(prompts)


side.input_size = 16  # images arrive with the shorter side resized to 16 (8-bit, CLIP-processor style)


class SmallBrightness(Brightness):
    """A plain class declaring its input as a class attribute (PIL's own bicubic)."""

    input_size = 8
    input_resize = "shortest_edge_pil"


class FloatJudge(Judge):
    """A RewardModel subclass declaring open_clip's float longest-edge resize."""

    input_size = 8
    input_resize = "longest_edge_float"


class Tagged:
    """Scores each image by the value of its first pixel (a test writes an id there), after
    ``delay_s`` per call, so concurrent requests pile up while a batch is scored; prompts
    containing ``fail_word`` make the call raise."""

    def __init__(self, delay_s=0.0, fail_word="\0"):
        self.delay_s, self.fail_word = delay_s, fail_word

    def __call__(self, images, prompts):
        import time

        if any(self.fail_word in p for p in prompts):
            raise ValueError(f"cannot score a prompt with {self.fail_word!r}")
        time.sleep(self.delay_s)
        return images[:, 0, 0, 0] * 255.0
