"""Offline rewards of the tiny model's "pairs" task: ground truth near the top, swapped layouts
near zero on pair_layout, against an independent restatement of the layout rule."""

import dataclasses
import time

import pytest
import torch

from mixgrpo_ray.models.tiny import pairs_task as pt
from mixgrpo_ray.models.tiny.pairs_rewards import PairFollowingReward, PairLayoutReward
from mixgrpo_ray.rewards.registry import build_reward
from mixgrpo_ray.eval.tiny_scores import score_images


@pytest.fixture(scope="module")
def scenes():
    attrs = list(pt.eval_attributes())
    images = pt.render(attrs, generator=torch.Generator().manual_seed(0))
    return attrs, pt.eval_prompts(), images


def swapped_pictures(attrs):
    """Each scene drawn with A and B exchanged in place (the prompt's relation inverted)."""
    return [dataclasses.replace(a, relation=pt.INVERSE[a.relation]) for a in attrs]


def layout_rule(images, attrs):
    """An independent restatement of the layout rule from exact pixel colours: +1 where A's
    centroid lies more than 2 px on the named side of B's, -1 more than 2 px on the other side,
    0 in between or when a colour is missing."""
    out = []
    for image, a in zip(images, attrs):
        centroids = []
        for name in (a.colour_a, a.colour_b):
            rgb = torch.tensor(pt.COLOURS[name], dtype=torch.uint8).view(3, 1, 1)
            ys, xs = torch.nonzero((image == rgb).all(dim=0), as_tuple=True)
            centroids.append(None if len(xs) == 0 else (xs.float().mean().item(), ys.float().mean().item()))
        if None in centroids:
            out.append(0)
            continue
        (xa, ya), (xb, yb) = centroids
        d = {"left of": xb - xa, "right of": xa - xb, "above": yb - ya, "below": ya - yb}[a.relation]
        out.append(1 if d > 2 else -1 if d < -2 else 0)
    return torch.tensor(out)


def test_registry_builds_both_with_options_and_errors_name_the_reward():
    pf = build_reward("pair_following", layout_scale=3.0)
    pl = build_reward("pair_layout")
    assert isinstance(pf, PairFollowingReward) and pf.name == "pair_following" and pf.layout_scale == 3.0
    assert isinstance(pl, PairLayoutReward) and pl.name == "pair_layout"
    assert pf.score_range == pl.score_range == (0.0, 1.0)
    with pytest.raises(ValueError, match="^pair_layout: layout_scale must be > 0"):
        build_reward("pair_layout", layout_scale=0)
    with pytest.raises(ValueError, match="^pair_following: colour_tolerance must be < colour_radius"):
        build_reward("pair_following", colour_tolerance=0.5)
    with pytest.raises(TypeError):
        build_reward("pair_layout", unknown_option=1)


def test_ground_truth_scores_near_the_maximum(scenes):
    _, prompts, images = scenes
    pf = PairFollowingReward()(images, prompts)
    layout = PairLayoutReward()(images, prompts)
    assert pf.dtype == torch.float32 and pf.shape == (len(prompts),)
    assert pf.mean() > 0.9 and pf.min() > 0.8
    assert layout.mean() > 0.99 and layout.min() > 0.98
    parts = PairFollowingReward().parts(images, prompts)
    assert set(parts) == {"background", "colour_a", "colour_b", "layout", "shape_a", "shape_b"}
    assert torch.equal(parts["layout"], layout)
    assert all(((v >= 0) & (v <= 1)).all() for v in parts.values())


def test_swapped_layouts_score_near_zero_on_pair_layout(scenes):
    attrs, prompts, images = scenes
    swapped = pt.render(swapped_pictures(attrs), generator=torch.Generator().manual_seed(0))
    layout = PairLayoutReward()(swapped, prompts)
    assert layout.max() < 0.02
    # only the layout part changes (up to pixelisation of the moved shapes): pair_following drops
    # by about a sixth
    pf = PairFollowingReward()
    drop = pf(images, prompts) - pf(swapped, prompts)
    assert ((drop - 1 / 6).abs() < 0.06).all() and abs(drop.mean().item() - 1 / 6) < 0.01


def test_layout_agrees_with_an_independent_restatement_of_the_rule():
    """Scenes with the named, the opposite or a random layout, and with A or B missing."""
    gen = torch.Generator().manual_seed(1)
    attrs = list(pt.train_attributes()[::7])
    drawn = [a if k % 3 == 0 else pt.PairAttributes(a.colour_a, a.shape_a, list(pt.RELATIONS)[k % 4], a.colour_b,
                                                    a.shape_b, a.background) for k, a in enumerate(attrs)]  # fmt: skip
    images = pt.render(drawn, generator=gen)
    # remove A from every 5th image and B from every 7th (paint it over with the background)
    for i, a in enumerate(attrs):
        for step, name in ((5, a.colour_a), (7, a.colour_b)):
            if i % step == 4:
                rgb = torch.tensor(pt.COLOURS[name], dtype=torch.uint8).view(3, 1, 1)
                mask = (images[i] == rgb).all(dim=0)
                images[i][:, mask] = torch.tensor(pt.BACKGROUNDS[a.background], dtype=torch.uint8).view(3, 1)
    prompts = [pt.prompt_for(a, i) for i, a in enumerate(attrs)]
    rule = layout_rule(images, attrs)
    score = PairLayoutReward()(images, prompts)
    missing = torch.tensor([i % 5 == 4 or i % 7 == 4 for i in range(len(attrs))])
    across = (rule == 0) & ~missing  # drawn along the other axis: the centroids barely differ along this one
    assert (rule == 1).sum() > 50 and (rule == -1).sum() > 20 and across.sum() > 20
    assert (score[rule == 1] > 0.95).all()
    assert (score[rule == -1] < 0.05).all()
    assert ((score[across] > 0.25) & (score[across] < 0.75)).all()  # graded softly around 0.5
    assert (score[missing] == 0).all() and (rule[missing] == 0).all()
    # pair_following's colour part sees the missing object too
    parts = PairFollowingReward().parts(images, prompts)
    gone_a = torch.tensor([i % 5 == 4 for i in range(len(attrs))])
    assert (parts["colour_a"][gone_a] < 0.01).all() and (parts["shape_a"][gone_a] == 0).all()


def test_wrong_colours_shapes_and_background_score_lower(scenes):
    attrs, prompts, images = scenes
    pf = PairFollowingReward()
    gt = pf(images, prompts).mean()
    for field, values, margin in (("background", list(pt.BACKGROUNDS), 0.15), ("shape_a", list(pt.SHAPES), 0.05)):
        wrong = [dataclasses.replace(a, **{field: values[(values.index(getattr(a, field)) + 1) % len(values)]})
                 for a in attrs]  # fmt: skip
        drawn = pt.render(wrong, generator=torch.Generator().manual_seed(0))  # the prompts ask for attrs
        assert pf(drawn, prompts).mean() < gt - margin, field
    # colours exchanged between A and B in the picture: colour areas may match, the layout does not
    exchanged = [dataclasses.replace(a, colour_a=a.colour_b, colour_b=a.colour_a) for a in attrs]
    images_x = pt.render(exchanged, generator=torch.Generator().manual_seed(0))
    assert PairLayoutReward()(images_x, prompts).max() < 0.02
    noise = torch.randint(0, 256, images.shape, generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    assert pf(noise, prompts).mean() < 0.1 and PairLayoutReward()(noise, prompts).mean() < 0.05


def test_rewards_reject_foreign_prompts_and_run_fast(scenes):
    _, prompts, images = scenes
    with pytest.raises(ValueError, match="objects"):
        PairFollowingReward()(images[:1], ["a small red circle on a white background, top left"])
    with pytest.raises(ValueError, match="square"):
        PairLayoutReward()(torch.zeros(1, 3, 32, 16), prompts[:1])
    start = time.perf_counter()
    PairFollowingReward()(images[:64], prompts[:64])
    assert time.perf_counter() - start < 2.0


def test_score_images_reports_the_pairs_rewards(scenes):
    _, prompts, images = scenes
    scores = score_images(images[:8], prompts[:8], "pairs")
    assert list(scores) == ["pair_following", "pair_layout"]
    assert scores["pair_layout"][0] > 0.99
    with pytest.raises(ValueError):
        score_images(images[:2], prompts[:2], "shapes")  # pairs prompts are not shapes prompts
