"""The tiny model's "pairs" task: grammar and parser, scene-level train / held-out split, renderer."""

import hashlib

import pytest
import torch

from mixgrpo_ray.models.tiny import pairs_task as pt
from mixgrpo_ray.models.tiny.model import SPECIAL_TOKENS, TinyConfig


def test_every_phrasing_of_every_combination_parses_back():
    assert len(pt.all_attributes()) == 5 * 4 * 3 * 3 * 4 * 3
    for attrs in pt.all_attributes():
        for t in range(len(pt.TEMPLATES)):
            assert pt.parse_prompt(pt.prompt_for(attrs, t)) == attrs


def test_the_examples_of_the_grammar():
    red_circle_blue_square = dict(colour_a="red", shape_a="circle", colour_b="blue", shape_b="square")
    for prompt, relation, background in [
        ("a red circle to the left of a blue square on a white background", "left of", "white"),
        ("a red circle above a blue square, gray background", "above", "gray"),
        ("white background: a red circle right of a blue square", "right of", "white"),
        ("a black background with a red circle below a blue square", "below", "black"),
    ]:
        assert pt.parse_prompt(prompt) == pt.PairAttributes(**red_circle_blue_square, relation=relation,
                                                            background=background)  # fmt: skip
    # free phrasing: case, punctuation and extra words do not matter; the object named first is A
    a = pt.parse_prompt("On a BLACK background, a Green Triangle sits just below a yellow triangle!")
    assert a == pt.PairAttributes("green", "triangle", "below", "yellow", "triangle", "black")
    assert a.swapped() == pt.PairAttributes("yellow", "triangle", "above", "green", "triangle", "black")
    assert a.scene() == a.swapped().scene() == a.swapped()
    assert pt.parse_prompt("a red circle left of a blue square, black background, small").relation == "left of"


def test_prompt_sets_parse_back_to_their_combinations():
    assert [pt.parse_prompt(p) for p in pt.train_prompts()] == list(pt.train_attributes())
    assert [pt.parse_prompt(p) for p in pt.eval_prompts()] == list(pt.eval_attributes())
    for prompts in (pt.train_prompts(), pt.eval_prompts()):  # both sets use every phrasing
        used = {t for p in prompts for t in range(len(pt.TEMPLATES)) if pt.prompt_for(pt.parse_prompt(p), t) == p}
        assert used == set(range(len(pt.TEMPLATES)))


@pytest.mark.parametrize(
    "prompt",
    [
        "a red circle to the left of a blue on a white background",  # one object
        "a red circle left of a blue square left of a green circle, white background",  # three objects
        "a red circle left of a red square, white background",  # one colour twice
        "a red circle\nleft of a red square, white background",  # ... with a line break in the prompt
        "a red circle to the left of a blue square",  # no background
        "a red circle left of a blue square on a white background, gray background",  # two backgrounds
        "a red circle and a blue square on a white background",  # no relation
        "a red circle left of a blue square, above, white background",  # two relations
        "left of: a red circle, a blue square, white background",  # the relation is not between the objects
        "",
    ],
)
def test_parser_rejects_prompts_outside_the_grammar_with_one_line(prompt):
    with pytest.raises(pt.PromptParseError) as err:
        pt.parse_prompt(prompt)
    assert isinstance(err.value, ValueError)
    assert "\n" not in str(err.value) and str(err.value).startswith("prompt ")


#: sha256 prefix of the held-out prompts, newline-joined: the split must not drift
EVAL_DIGEST = "8777da6e5cff0581"


def test_split_is_disjoint_by_scene_deterministic_and_covers_every_value():
    train, held_out = pt.train_attributes(), pt.eval_attributes()
    assert len(train) == 1728 and len(held_out) == 216 == len(pt.eval_prompts())
    assert not set(train) & set(held_out)
    assert not set(pt.train_prompts()) & set(pt.eval_prompts())
    # no held-out prompt describes a picture of the train set, in either phrasing
    assert not {a.scene() for a in train} & {a.scene() for a in held_out}
    assert len({a.scene() for a in held_out}) == len(held_out)
    # the same split when computed again, and the one pinned here
    assert pt._split.__wrapped__() == (train, held_out)
    digest = hashlib.sha256("\n".join(pt.eval_prompts()).encode()).hexdigest()[:16]
    assert digest == EVAL_DIGEST, digest
    for field, values in (("colour_a", pt.COLOURS), ("shape_a", pt.SHAPES), ("relation", pt.RELATIONS),
                          ("colour_b", pt.COLOURS), ("shape_b", pt.SHAPES), ("background", pt.BACKGROUNDS)):
        assert {getattr(a, field) for a in train} == set(values)
        assert {getattr(a, field) for a in held_out} == set(values)



def test_vocabulary_covers_every_prompt_word_and_is_the_pairs_models():
    vocab = set(pt.vocabulary())
    for p in pt.train_prompts() + pt.eval_prompts():
        assert set(pt.tokenize(p)) <= vocab
    assert TinyConfig(task="pairs").vocabulary == SPECIAL_TOKENS + pt.vocabulary()
    assert max(len(pt.tokenize(p)) for p in pt.train_prompts()) + 1 <= TinyConfig().max_words  # + <bos>
    with pytest.raises(ValueError, match="shapes, pairs"):
        TinyConfig(task="nope")


def test_render_is_deterministic_from_the_seed():
    attrs = list(pt.eval_attributes()[:20])
    a = pt.render(attrs, generator=torch.Generator().manual_seed(3))
    b = pt.render(attrs, generator=torch.Generator().manual_seed(3))
    c = pt.render(attrs, generator=torch.Generator().manual_seed(4))
    assert a.dtype == torch.uint8 and a.shape == (20, 3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    p1, i1 = pt.sample_scenes(16, torch.Generator().manual_seed(9))
    p2, i2 = pt.sample_scenes(16, torch.Generator().manual_seed(9))
    assert p1 == p2 and torch.equal(i1, i2)
    assert all(pt.parse_prompt(p) in set(pt.train_attributes()) for p in p1)
    assert pt.render([]).shape == (0, 3, 32, 32)


def _pixels_of(images, colours):
    """Boolean masks ``(B, H, W)`` of the pixels exactly of each image's ``colours`` (uint8 RGB)."""
    return (images == colours.view(-1, 3, 1, 1)).all(dim=1)


def _uint8(names):
    return (pt.colour_table(names) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("jitter", [False, True])
def test_render_draws_both_objects_apart_on_the_named_side(jitter):
    attrs = list(pt.all_attributes())
    images = pt.render(attrs, generator=torch.Generator().manual_seed(0), jitter=jitter)
    geo = pt.nominal_geometry(attrs)
    ys, xs = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    a = _pixels_of(images, _uint8([x.colour_a for x in attrs]))
    b = _pixels_of(images, _uint8([x.colour_b for x in attrs]))
    bg = _pixels_of(images, _uint8([x.background for x in attrs]))
    assert (a | b | bg).all()  # hard-edged: every pixel is one of the three colours
    for mask, area in ((a, geo["area_a"]), (b, geo["area_b"])):
        count = mask.sum(dim=(1, 2)).float()
        assert ((count - area).abs() < 0.45 * area + 4).all()
    # the one-pixel border is background: both objects lie inside the image
    assert bg[:, 0, :].all() and bg[:, -1, :].all() and bg[:, :, 0].all() and bg[:, :, -1].all()
    centroid = {}
    for name, mask in (("a", a), ("b", b)):
        n = mask.sum(dim=(1, 2)).float()
        centroid[name] = ((mask * xs).sum(dim=(1, 2)) / n, (mask * ys).sum(dim=(1, 2)) / n)
    for i, x in enumerate(attrs):
        dx = centroid["a"][0][i] - centroid["b"][0][i]
        dy = centroid["a"][1][i] - centroid["b"][1][i]
        along, across = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[x.relation]
        assert along > 10 and abs(across) < 2.5, (x, along, across)


def test_attributes_reject_unknown_values_and_equal_colours():
    with pytest.raises(ValueError, match="unknown relation"):
        pt.PairAttributes("red", "circle", "behind", "blue", "square", "white")
    with pytest.raises(ValueError, match="differ in colour"):
        pt.PairAttributes("red", "circle", "above", "red", "square", "white")
    with pytest.raises(ValueError, match="split"):
        pt.sample_scenes(2, torch.Generator(), split="test")
