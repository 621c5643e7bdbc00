"""The built-in task: grammar and parser, seeded renderer, disjoint train / held-out split."""

import pytest
import torch

from mixgrpo_ray.models.tiny import task


def test_every_phrasing_of_every_combination_parses_back():
    for attrs in task.all_attributes():
        for t in range(len(task.TEMPLATES)):
            assert task.parse_prompt(task.prompt_for(attrs, t)) == attrs


def test_prompt_sets_parse_back_to_their_combinations():
    assert [task.parse_prompt(p) for p in task.train_prompts()] == list(task.train_attributes())
    assert [task.parse_prompt(p) for p in task.eval_prompts()] == list(task.eval_attributes())


def test_parser_reads_free_phrasing():
    a = task.parse_prompt("Large BLUE Triangle; in the middle, on a black background!")
    assert a == task.Attributes("triangle", "blue", "large", "center", "black")
    assert task.parse_prompt("a small red square on a gray background, bottom").position == "bottom center"
    assert task.parse_prompt("a small red square on a gray background, left").position == "center left"


@pytest.mark.parametrize(
    "prompt",
    [
        "a small red on a white background, top left",  # no shape
        "a small red circle square on a white background, top left",  # two shapes
        "a red circle on a white background, top left",  # no size
        "a small red circle, top left",  # no background
        "a small circle on a white background, top left",  # no shape colour
        "a small red circle on a white background",  # no position
        "a small red circle on a white background, top bottom",  # contradictory position
        "",
    ],
)
def test_parser_rejects_prompts_outside_the_grammar(prompt):
    with pytest.raises(task.PromptParseError):
        task.parse_prompt(prompt)


def test_split_is_disjoint_complete_and_covers_every_value():
    train, held_out = task.train_attributes(), task.eval_attributes()
    assert len(train) + len(held_out) == len(task.all_attributes()) == 5 * 3 * 2 * 9 * 3
    assert not set(train) & set(held_out)
    assert not set(task.train_prompts()) & set(task.eval_prompts())
    assert 0.15 < len(held_out) / len(task.all_attributes()) < 0.25
    for field, values in (("shape", task.SHAPES), ("colour", task.COLOURS), ("size", task.SIZES),
                          ("position", task.POSITIONS), ("background", task.BACKGROUNDS)):  # fmt: skip
        assert {getattr(a, field) for a in train} == set(values)
        assert {getattr(a, field) for a in held_out} == set(values)


def test_vocabulary_covers_every_prompt_word():
    vocab = set(task.vocabulary())
    for p in task.train_prompts() + task.eval_prompts():
        assert set(task.tokenize(p)) <= vocab


def test_render_is_deterministic_from_the_seed():
    attrs = list(task.eval_attributes()[:20])
    a = task.render(attrs, generator=torch.Generator().manual_seed(3))
    b = task.render(attrs, generator=torch.Generator().manual_seed(3))
    c = task.render(attrs, generator=torch.Generator().manual_seed(4))
    assert a.dtype == torch.uint8 and a.shape == (20, 3, 32, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    p1, i1 = task.sample_scenes(16, torch.Generator().manual_seed(9))
    p2, i2 = task.sample_scenes(16, torch.Generator().manual_seed(9))
    assert p1 == p2 and torch.equal(i1, i2)
    assert all(task.parse_prompt(p) in set(task.train_attributes()) for p in p1)


def test_render_draws_the_requested_scene():
    attrs = list(task.all_attributes())
    images = task.render(attrs, jitter=False)
    geo = task.nominal_geometry(attrs)
    fg = (task.colour_table([a.colour for a in attrs]) * 255).round().to(torch.uint8)
    bg = (task.colour_table([a.background for a in attrs]) * 255).round().to(torch.uint8)
    for i, a in enumerate(attrs):
        img = images[i]
        cx, cy = int(geo["cx"][i]), int(geo["cy"][i])
        # the bounding-box centre is inside every shape; the far corner is background
        assert torch.equal(img[:, cy, cx], fg[i]), a
        far_y = 0 if cy > 16 else 31
        far_x = 0 if cx > 16 else 31
        assert torch.equal(img[:, far_y, far_x], bg[i]), a
        area = (img == fg[i].view(3, 1, 1)).all(dim=0).sum().item()
        assert abs(area - geo["area"][i].item()) < 0.2 * geo["area"][i].item() + 4, (a, area)


def test_sizes_and_shapes_differ_in_area():
    attrs = [task.Attributes(s, "red", z, "center", "white") for s in task.SHAPES for z in task.SIZES]
    areas = task.nominal_geometry(attrs)["area"].view(3, 2)
    assert (areas[:, 1] > 2.5 * areas[:, 0]).all()  # large vs small
    assert torch.allclose(areas[:, 0] / areas[1, 0], torch.tensor([torch.pi / 4, 1.0, 0.5]))


def test_attributes_reject_unknown_values():
    with pytest.raises(ValueError, match="unknown colour"):
        task.Attributes("circle", "pink", "small", "center", "white")
    with pytest.raises(ValueError, match="split"):
        task.sample_scenes(2, torch.Generator(), split="test")
