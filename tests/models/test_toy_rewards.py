"""Offline rewards of the tiny task: ground truth scores near the top, wrong images clearly lower."""

import dataclasses
import math
import time

import pytest
import torch

from mixgrpo_ray.models.tiny import task
from mixgrpo_ray.rewards.registry import build_reward
from mixgrpo_ray.models.tiny.rewards import PromptFollowingReward, QualityReward


@pytest.fixture(scope="module")
def scenes():
    attrs = list(task.eval_attributes())
    prompts = task.eval_prompts()
    images = task.render(attrs, generator=torch.Generator().manual_seed(0))
    return attrs, prompts, images


def _with(attrs, field, values):
    """Each scene with ``field`` replaced by the next value in ``values`` (a different one)."""
    values = list(values)
    return [dataclasses.replace(a, **{field: values[(values.index(getattr(a, field)) + 1) % len(values)]})
            for a in attrs]  # fmt: skip


def test_registry_builds_both_with_options():
    pf = build_reward("prompt_following")
    q = build_reward("quality", stray_scale=0.05)
    assert isinstance(pf, PromptFollowingReward) and pf.name == "prompt_following"
    assert isinstance(q, QualityReward) and q.name == "quality" and q.stray_scale == 0.05
    assert pf.score_range == (0.0, 1.0) and q.score_range == (0.0, 1.0)
    with pytest.raises(ValueError, match="size_tol"):
        build_reward("prompt_following", size_tol=0)
    with pytest.raises(TypeError):
        build_reward("quality", unknown_option=1)


def test_ground_truth_scores_near_the_maximum(scenes):
    _, prompts, images = scenes
    pf = PromptFollowingReward()(images, prompts)
    q = QualityReward()(images, prompts)
    assert pf.dtype == torch.float32 and pf.shape == (len(prompts),)
    assert pf.mean() > 0.9 and pf.min() > 0.75
    assert q.mean() > 0.99 and q.min() > 0.95
    assert ((pf >= 0) & (pf <= 1)).all() and ((q >= 0) & (q <= 1)).all()


def test_mismatched_prompts_score_clearly_lower(scenes):
    _, prompts, images = scenes
    reward = PromptFollowingReward()
    gt = reward(images, prompts).mean()
    shuffled = prompts[7:] + prompts[:7]
    assert all(task.parse_prompt(a) != task.parse_prompt(b) for a, b in zip(prompts, shuffled))
    assert reward(images, shuffled).mean() < gt - 0.4


@pytest.mark.parametrize(
    "field,values,min_drop",
    [
        ("colour", task.COLOURS, 0.5),
        ("shape", task.SHAPES, 0.15),
        ("size", task.SIZES, 0.15),
        ("position", task.POSITIONS, 0.15),
        ("background", task.BACKGROUNDS, 0.15),
    ],
)
def test_each_wrong_attribute_costs_prompt_following(scenes, field, values, min_drop):
    attrs, prompts, images = scenes
    reward = PromptFollowingReward()
    wrong = task.render(_with(attrs, field, values), generator=torch.Generator().manual_seed(0))
    right, other = reward(images, prompts), reward(wrong, prompts)
    assert other.mean() < right.mean() - min_drop
    assert (other < right).float().mean() > 0.8


def test_more_of_the_object_colour_does_not_pay(scenes):
    """A second blob of the right colour, or a bigger object, scores lower than the scene asked for."""
    attrs, prompts, images = scenes
    reward = PromptFollowingReward()
    x = images.float() / 255
    right = reward(x, prompts)
    extra = x.clone()
    for i, a in enumerate(attrs):
        row, col = task.POSITIONS[a.position]
        ys = slice(1, 6) if row == 2 else slice(26, 31)
        xs = slice(1, 6) if col == 2 else slice(26, 31)
        extra[i, :, ys, xs] = task.colour_table([a.colour]).view(3, 1, 1)
    assert (reward(extra, prompts) < right).float().mean() > 0.9
    small = [i for i, a in enumerate(attrs) if a.size == "small"]
    bigger = task.render([dataclasses.replace(attrs[i], size="large") for i in small],
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert reward(bigger, [prompts[i] for i in small]).mean() < right[small].mean() - 0.15


def test_noise_scores_low_on_both(scenes):
    _, prompts, images = scenes
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(1))
    assert PromptFollowingReward()(noise, prompts).mean() < 0.1
    assert QualityReward()(noise, prompts).mean() < 0.3


def test_scores_are_graded(scenes):
    """Degrading an image step by step lowers the scores step by step (signal for RL)."""
    _, prompts, images = scenes
    x = images.float() / 255
    g = torch.Generator().manual_seed(2)
    pf, q = PromptFollowingReward(), QualityReward()
    pf_scores, q_scores = [], []
    for level in (0.0, 0.06, 0.12, 0.25):
        noisy = (x + level * torch.randn(x.shape, generator=g)).clamp(0, 1)
        pf_scores.append(pf(noisy, prompts).mean().item())
        q_scores.append(q(noisy, prompts).mean().item())
    assert pf_scores == sorted(pf_scores, reverse=True) and pf_scores[0] - pf_scores[-1] > 0.5
    assert q_scores == sorted(q_scores, reverse=True) and q_scores[0] - q_scores[-1] > 0.5
    assert 0.1 < pf_scores[2] < 0.9  # in between, not all-or-nothing


def test_quality_penalises_blur_stray_blobs_and_empty_images(scenes):
    attrs, prompts, images = scenes
    q = QualityReward()
    x = images.float() / 255
    clean = q(x, prompts)
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    assert q(blurred, prompts).mean() < clean.mean() - 0.03
    # a blob of a third palette colour in the corner farthest from the object
    stray = x.clone()
    for i, a in enumerate(attrs):
        row, col = task.POSITIONS[a.position]
        ys = slice(0, 5) if row == 2 else slice(27, 32)
        xs = slice(0, 5) if col == 2 else slice(27, 32)
        third = next(c for c in task.COLOURS if c != a.colour)
        stray[i, :, ys, xs] = task.colour_table([third]).view(3, 1, 1)
    assert q(stray, prompts).mean() < clean.mean() - 0.2
    empty = task.colour_table([a.background for a in attrs]).view(-1, 3, 1, 1).expand_as(x)
    assert q(empty, prompts).mean() < clean.mean() - 0.25


def test_uint8_and_float_inputs_agree_and_scores_are_deterministic(scenes):
    _, prompts, images = scenes
    for reward in (PromptFollowingReward(), QualityReward()):
        a = reward(images, prompts)
        b = reward(images.float() / 255, prompts)
        assert torch.allclose(a, b, atol=1e-5)
        assert torch.equal(a, reward(images, prompts))


def test_96_images_score_well_under_a_second(scenes):
    _, prompts, images = scenes
    pf, q = PromptFollowingReward(), QualityReward()
    pf(images[:8], prompts[:8])  # warm-up
    best = float("inf")
    for _ in range(3):  # best of three: the CPU is shared with other jobs
        start = time.perf_counter()
        pf(images[:96], prompts[:96])
        q(images[:96], prompts[:96])
        best = min(best, time.perf_counter() - start)
    assert best < 0.5


def test_bad_inputs_raise_clear_errors(scenes):
    _, prompts, images = scenes
    with pytest.raises(ValueError, match="prompt"):
        PromptFollowingReward()(images[:1], ["a photo of a cat"])
    with pytest.raises(ValueError, match="2 prompts"):
        QualityReward()(images[:1], prompts[:2])


def test_toy_rewards_need_full_resolution():
    # they read exact pixels of the task's small images: no declared resize
    assert build_reward("prompt_following").input() is None and build_reward("quality").input() is None


def test_object_size_reads_the_area_ratio_of_what_was_drawn_to_what_was_asked(scenes):
    """``object_size`` (a diagnostic, weight 0) is log2 of drawn over requested area: about 0 on
    ground truth, and the restated ratio of the two sizes' exact areas when the prompt asks the
    other size of the same shape."""
    from mixgrpo_ray.models.tiny.rewards import ObjectSizeReward

    attrs, prompts, images = scenes
    size = build_reward("object_size")
    assert isinstance(size, ObjectSizeReward) and size.name == "object_size"
    own = size(images, prompts)
    assert own.shape == (len(prompts),) and abs(own.mean()) < 0.1 and own.abs().max() < 0.5  # renders jitter
    plain = task.render(attrs, jitter=False)
    assert size(plain, prompts).abs().max() < 0.3  # un-jittered: drawn as asked, up to edge pixels
    swapped = _with(attrs, "size", task.SIZES)
    w = images.shape[-1]

    def area(a):  # exact shape area in pixels, restated: pi h^2, 4 h^2, 2 h^2 for half extent h
        h = task.SIZE_HALF_EXTENT[a.size] * w
        return {"circle": math.pi, "square": 4.0, "triangle": 2.0}[a.shape] * h * h

    # the same drawn area against another requested one: the difference is the requested areas' ratio
    got = size(images, [task.prompt_for(a) for a in swapped])
    expected = torch.tensor([math.log2((area(a) + 1) / (area(b) + 1)) for a, b in zip(attrs, swapped)])
    torch.testing.assert_close(got - own, expected, atol=1e-4, rtol=1e-4)
    # larger than asked is positive, smaller negative
    assert ((got > 0) == torch.tensor([a.size == "large" for a in attrs])).all()
    with pytest.raises(ValueError, match="square"):
        size(images[:, :, :, :16], prompts)
