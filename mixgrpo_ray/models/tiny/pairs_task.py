"""The embedded tiny model's second built-in task, "pairs": two coloured shapes in a named layout.

A scene is a :class:`PairAttributes` record: object A (a colour and a shape) placed ``relation``
to object B (another colour, any shape), ``relation`` one of ``"left of"``, ``"right of"``,
``"above"``, ``"below"``, on a plain background. Getting a prompt right therefore means putting
the right colour on the right side, a decision a flow model makes in its early, high-noise
denoising steps. Colours, backgrounds and shapes are those of the shapes task
(:mod:`mixgrpo_ray.models.tiny.task`).

Prompts come from a small grammar of phrasings (:data:`TEMPLATES`), e.g. ``"a red circle to the
left of a blue square on a white background"``, ``"a red circle above a blue square, gray
background"`` or ``"white background: a red circle right of a blue square"``; the object named
first is A. :func:`parse_prompt` reads any of them back. :func:`render` draws scenes as
``uint8`` RGB images (32x32 by default) with seeded jitter of the pair's midpoint (along and
across the relation's axis), of the distance between the objects and of their common size.

Split. ``"A left of B"`` and ``"B right of A"`` describe the same picture, so the split is made
on *scenes* (the picture: which object is on the left / top, the axis, the background): the
2 x 5 x 4 x 3 x 3 x 3 = 1080 scenes are split once, deterministically, 80/20. The train set
(:func:`train_attributes`, pre-training and RL prompts) holds both phrasings of each of the 864
train scenes, 1728 of the 2160 attribute combinations; the held-out set (:func:`eval_attributes`,
:func:`eval_prompts`) holds one phrasing of each of the 216 held-out scenes, 216 prompts, which
name A first or B first alternately so that every relation occurs. No held-out prompt shows a
picture the train set shows.

Geometry is in pixels of the rendered image with pixel centres at ``i + 0.5``; shapes are drawn
by :func:`mixgrpo_ray.models.tiny.task.shape_masks` (``(cx, cy)`` is the centre of a shape's
bounding box, ``half`` its half extent).
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch

from mixgrpo_ray.models.tiny.task import (
    BACKGROUNDS, COLOURS, RESOLUTION, SHAPES, PromptParseError, colour_table, draw_scenes, grammar_words, shape_area,
    shape_masks, tokenize,
)

__all__ = [
    "BACKGROUNDS", "COLOURS", "RESOLUTION", "SHAPES", "RELATIONS", "TEMPLATES", "PairAttributes", "PromptParseError",
    "colour_table", "prompt_for", "tokenize", "vocabulary", "parse_prompt", "all_attributes", "train_attributes",
    "eval_attributes", "train_prompts", "eval_prompts", "nominal_geometry", "render", "sample_scenes",
]  # fmt: skip

#: where A lies relative to B -> (axis: 0 for x, 1 for y; sign of A's offset from the midpoint)
RELATIONS: dict[str, tuple[int, int]] = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}
#: the relation that describes the same picture with A and B exchanged
INVERSE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
#: the long spelling of each relation used by some templates
LONG_RELATION: dict[str, str] = {
    "left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below",
}
#: half extent of both objects as a fraction of the image width (4.5 px at 32x32)
HALF_EXTENT = 0.14
#: distance between the two objects' centres, along the relation's axis, as a fraction of the width
SEPARATION = 0.45
#: seeded jitter of rendered scenes, as fractions of the width: the pair's midpoint moves
#: uniformly within +-MIDPOINT_JITTER of the image centre on both axes, the separation by
#: +-SEPARATION_JITTER; the common half extent is multiplied by a factor in SIZE_JITTER
MIDPOINT_JITTER = 0.06
SEPARATION_JITTER = 0.03
SIZE_JITTER = (0.9, 1.1)
#: fraction of scenes held out for evaluation, and the seed of the split
EVAL_FRACTION = 0.2
SPLIT_SEED = 20250722

#: the prompt grammar: ``{a}`` / ``{b}`` are ``"<colour> <shape>"``; ``{relation}`` is the short
#: spelling (``"left of"``), ``{long_relation}`` the long one (``"to the left of"``)
TEMPLATES: tuple[str, ...] = (
    "a {a} {long_relation} a {b} on a {background} background",
    "a {a} {relation} a {b}, {background} background",
    "{background} background: a {a} {relation} a {b}",
    "a {background} background with a {a} {long_relation} a {b}",
)


@dataclass(frozen=True)
class PairAttributes:
    """What one scene shows: a ``colour_a`` ``shape_a`` ``relation`` a ``colour_b`` ``shape_b``
    on ``background``. The two colours differ; the shapes may be equal."""

    colour_a: str
    shape_a: str
    relation: str
    colour_b: str
    shape_b: str
    background: str

    def __post_init__(self) -> None:
        for field, allowed in (
            ("colour_a", COLOURS), ("shape_a", SHAPES), ("relation", RELATIONS),
            ("colour_b", COLOURS), ("shape_b", SHAPES), ("background", BACKGROUNDS),
        ):  # fmt: skip
            if getattr(self, field) not in allowed:
                raise ValueError(f"unknown {field} {getattr(self, field)!r}; choose one of: {', '.join(allowed)}")
        if self.colour_a == self.colour_b:
            raise ValueError(f"the two objects must differ in colour, got {self.colour_a!r} twice")

    def swapped(self) -> "PairAttributes":
        """The same picture described with B named first."""
        return PairAttributes(self.colour_b, self.shape_b, INVERSE[self.relation], self.colour_a, self.shape_a,
                              self.background)  # fmt: skip

    def scene(self) -> "PairAttributes":
        """The canonical description of the picture: the one whose relation is ``"left of"`` or
        ``"above"`` (A is the left / top object)."""
        return self if self.relation in ("left of", "above") else self.swapped()


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------
def prompt_for(attrs: PairAttributes, template: int = 0) -> str:
    """The prompt for ``attrs`` in phrasing ``template`` (an index into :data:`TEMPLATES`)."""
    return TEMPLATES[template % len(TEMPLATES)].format(
        a=f"{attrs.colour_a} {attrs.shape_a}", b=f"{attrs.colour_b} {attrs.shape_b}", relation=attrs.relation,
        long_relation=LONG_RELATION[attrs.relation], background=attrs.background,
    )  # fmt: skip


@lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """Every word the grammar uses, sorted."""
    return grammar_words(TEMPLATES, COLOURS, BACKGROUNDS, SHAPES, RELATIONS, LONG_RELATION.values())


_RELATION_WORDS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}


@lru_cache(maxsize=8192)
def parse_prompt(text: str) -> PairAttributes:
    """Read a prompt of the grammar back into :class:`PairAttributes`.

    An object is a shape colour directly followed by a shape word; there must be exactly two, of
    different colours, and the object named first is A. The background colour is the colour word
    directly before ``"background"``. Exactly one relation word (``left``, ``right``, ``above``,
    ``below``) must stand between the two objects. Other words are ignored. Raises
    :class:`PromptParseError` (one line) naming what is missing or ambiguous.
    """
    words = tokenize(text)
    objects = [(i, w, nxt) for i, (w, nxt) in enumerate(zip(words, words[1:])) if w in COLOURS and nxt in SHAPES]
    if len(objects) != 2:
        raise PromptParseError(f"prompt {text!r} names {len(objects)} objects; expected two, each a colour "
                               f"({', '.join(COLOURS)}) followed by a shape ({', '.join(SHAPES)})")  # fmt: skip
    (ia, colour_a, shape_a), (ib, colour_b, shape_b) = objects
    if colour_a == colour_b:
        raise PromptParseError(f"prompt {text!r} names two {colour_a} objects; the two colours must differ")
    backgrounds = sorted({w for w, nxt in zip(words, words[1:]) if nxt == "background" and w in BACKGROUNDS})
    if len(backgrounds) != 1:
        what = "no" if not backgrounds else f"several ({', '.join(backgrounds)})"
        raise PromptParseError(f"prompt {text!r} names {what} background colour; expected one of: "
                               f"{', '.join(BACKGROUNDS)}")  # fmt: skip
    relations = [(i, _RELATION_WORDS[w]) for i, w in enumerate(words) if w in _RELATION_WORDS]
    if len(relations) != 1 or not ia + 1 < relations[0][0] < ib:
        found = ", ".join(r for _, r in relations) or "none"
        raise PromptParseError(f"prompt {text!r} must name exactly one relation between its two objects "
                               f"({', '.join(RELATIONS)}); found: {found}")  # fmt: skip
    return PairAttributes(colour_a, shape_a, relations[0][1], colour_b, shape_b, backgrounds[0])


# --------------------------------------------------------------------------------------------
# Attribute combinations and the train / eval split
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def all_attributes() -> tuple[PairAttributes, ...]:
    """Every attribute combination (2160), in a fixed canonical order."""
    return tuple(
        PairAttributes(ca, sa, r, cb, sb, bg)
        for bg in BACKGROUNDS for r in RELATIONS for ca in COLOURS for cb in COLOURS if cb != ca
        for sa in SHAPES for sb in SHAPES
    )  # fmt: skip


@lru_cache(maxsize=1)
def _split() -> tuple[tuple[PairAttributes, ...], tuple[PairAttributes, ...]]:
    scenes = list(dict.fromkeys(a.scene() for a in all_attributes()))  # first-seen (canonical) order
    order = list(range(len(scenes)))
    random.Random(SPLIT_SEED).shuffle(order)
    held_out = {scenes[i] for i in order[: round(EVAL_FRACTION * len(scenes))]}
    train = tuple(a for a in all_attributes() if a.scene() not in held_out)
    # one phrasing per held-out scene, naming the left / top object first at even positions
    held = tuple(s if i % 2 == 0 else s.swapped() for i, s in enumerate(s for s in scenes if s in held_out))
    return train, held


def train_attributes() -> tuple[PairAttributes, ...]:
    """The training combinations (both phrasings of 80 % of the scenes: 1728), canonical order."""
    return _split()[0]


def eval_attributes() -> tuple[PairAttributes, ...]:
    """The held-out combinations (one phrasing of each of the other 20 % of the scenes: 216), in
    scene order; none shows a picture of the train set."""
    return _split()[1]


def train_prompts() -> list[str]:
    """One prompt per training combination (phrasings cycle through :data:`TEMPLATES`)."""
    return [prompt_for(a, i) for i, a in enumerate(train_attributes())]


def eval_prompts() -> list[str]:
    """One prompt per held-out combination, 216 (phrasings cycle through :data:`TEMPLATES`)."""
    return [prompt_for(a, i) for i, a in enumerate(eval_attributes())]


# --------------------------------------------------------------------------------------------
# Geometry and rendering
# --------------------------------------------------------------------------------------------
def nominal_geometry(attrs: Sequence[PairAttributes], resolution: int = RESOLUTION) -> dict[str, torch.Tensor]:
    """Un-jittered geometry of each scene, in pixels: bounding-box centres ``cx_a``, ``cy_a``,
    ``cx_b``, ``cy_b``, the common ``half`` extent, each object's exact ``area_a`` / ``area_b``,
    shape indices ``shape_a`` / ``shape_b`` (int64, into :data:`SHAPES`), and ``axis`` (int64:
    0 for left/right, 1 for above/below) and ``sign`` (float, +1 when A lies at larger x or y
    than B); ``(batch,)`` tensors, float32 unless noted."""
    axis = torch.tensor([RELATIONS[a.relation][0] for a in attrs], dtype=torch.long)
    sign = torch.tensor([RELATIONS[a.relation][1] for a in attrs], dtype=torch.float32)
    half = torch.full((len(attrs),), HALF_EXTENT * resolution, dtype=torch.float32)
    mid = torch.full((len(attrs),), resolution / 2.0)
    return _place(attrs, axis, sign, mid, mid, torch.full_like(mid, SEPARATION * resolution), half)


def _place(
    attrs: Sequence[PairAttributes],
    axis: torch.Tensor,
    sign: torch.Tensor,
    mid_x: torch.Tensor,
    mid_y: torch.Tensor,
    separation: torch.Tensor,
    half: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The geometry of :func:`nominal_geometry` for pairs centred on ``(mid_x, mid_y)``, their
    centres ``separation`` pixels apart along ``axis``."""
    offset = sign * separation / 2  # A's offset from the midpoint along the axis; B's is -offset
    on_x, on_y = (axis == 0).float(), (axis == 1).float()
    shape_a = torch.tensor([SHAPES.index(a.shape_a) for a in attrs], dtype=torch.long)
    shape_b = torch.tensor([SHAPES.index(a.shape_b) for a in attrs], dtype=torch.long)
    return {
        "cx_a": mid_x + on_x * offset, "cy_a": mid_y + on_y * offset,
        "cx_b": mid_x - on_x * offset, "cy_b": mid_y - on_y * offset,
        "half": half, "shape_a": shape_a, "shape_b": shape_b,
        "area_a": shape_area(shape_a, half), "area_b": shape_area(shape_b, half), "axis": axis, "sign": sign,
    }  # fmt: skip


def render(
    attrs: Sequence[PairAttributes],
    resolution: int = RESOLUTION,
    generator: torch.Generator | None = None,
    jitter: bool = True,
) -> torch.Tensor:
    """Ground-truth images ``(batch, 3, H, W)`` uint8 of ``attrs``.

    With ``jitter`` (default) each scene's midpoint, separation and size are perturbed by
    random amounts drawn from ``generator`` (deterministic for a seeded generator; see
    :data:`MIDPOINT_JITTER`); without it the nominal geometry is drawn exactly. The two objects
    never overlap.
    """
    if not attrs:
        return torch.zeros((0, 3, resolution, resolution), dtype=torch.uint8)
    geo = nominal_geometry(attrs, resolution)
    if jitter:
        u = torch.rand((4, len(attrs)), generator=generator)
        lo, hi = SIZE_JITTER
        mid_x = resolution / 2.0 + (2 * u[0] - 1) * MIDPOINT_JITTER * resolution
        mid_y = resolution / 2.0 + (2 * u[1] - 1) * MIDPOINT_JITTER * resolution
        separation = (SEPARATION + (2 * u[2] - 1) * SEPARATION_JITTER) * resolution
        half = geo["half"] * (lo + (hi - lo) * u[3])
        geo = _place(attrs, geo["axis"], geo["sign"], mid_x, mid_y, separation, half)
    mask_a = shape_masks(geo["shape_a"], geo["cx_a"], geo["cy_a"], geo["half"], resolution).unsqueeze(1)
    mask_b = shape_masks(geo["shape_b"], geo["cx_b"], geo["cy_b"], geo["half"], resolution).unsqueeze(1)
    colour_a = colour_table([a.colour_a for a in attrs]).view(-1, 3, 1, 1)
    colour_b = colour_table([a.colour_b for a in attrs]).view(-1, 3, 1, 1)
    image = colour_table([a.background for a in attrs]).view(-1, 3, 1, 1).expand(-1, -1, resolution, resolution)
    image = image * (1 - mask_b) + colour_b * mask_b
    image = image * (1 - mask_a) + colour_a * mask_a
    return (image * 255.0).round().to(torch.uint8)


def sample_scenes(
    batch: int, generator: torch.Generator, split: str = "train", resolution: int = RESOLUTION
) -> tuple[list[str], torch.Tensor]:
    """A random batch of ``(prompts, uint8 images)`` from ``split`` (``"train"`` or ``"eval"``).

    Combinations and phrasings (any of :data:`TEMPLATES`) are drawn uniformly from
    ``generator``; images are jittered renders. Used by pre-training.
    """
    return draw_scenes(sys.modules[__name__], batch, generator, split, resolution)
