"""The built-in text-to-image task of the embedded tiny model: one coloured shape on a background.

A scene is an :class:`Attributes` record: a shape (circle, square, triangle) of a colour, a size
(small, large) and a position on a 3x3 grid (``"top left"`` ... ``"center"`` ... ``"bottom
right"``), drawn on a plain background colour. Prompts come from a small grammar of phrasings
(:data:`TEMPLATES`), e.g. ``"a small red circle on a white background, top left"``;
:func:`parse_prompt` reads any of them back into attributes. :func:`render` draws scenes as
``uint8`` RGB images (32x32 by default) with a little seeded jitter in position and size, so
one prompt has many correct images.

The 5 x 3 x 2 x 9 x 3 = 810 attribute combinations are split once, deterministically, into a
train set (pre-training and RL prompts) and a held-out evaluation set (:func:`eval_prompts`):
no combination, hence no prompt, is in both.

Geometry is in pixels of the rendered image with pixel centres at ``i + 0.5``. A shape's size
is its *half extent* ``h``: circle radius ``h``; square of side ``2h``; triangle with apex
``(cx, cy - h)`` and base corners ``(cx -/+ h, cy + h)``. ``(cx, cy)`` is the centre of the
shape's bounding box.
"""

from __future__ import annotations

import random
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Iterable, Sequence

import torch

#: colours a shape can have (RGB, uint8)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 220),
    "yellow": (235, 200, 40),
    "purple": (150, 70, 190),
}
#: background colours (RGB, uint8); disjoint from :data:`COLOURS`
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "black": (25, 25, 25),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
#: half extent of each size as a fraction of the image width
SIZE_HALF_EXTENT: dict[str, float] = {"small": 0.125, "large": 0.22}
#: grid position -> (row, column), each in {0, 1, 2}
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0), "top center": (0, 1), "top right": (0, 2),
    "center left": (1, 0), "center": (1, 1), "center right": (1, 2),
    "bottom left": (2, 0), "bottom center": (2, 1), "bottom right": (2, 2),
}  # fmt: skip
#: centre of grid row/column k as a fraction of the image size
GRID_FRACTIONS: tuple[float, float, float] = (0.25, 0.5, 0.75)
#: default rendered resolution (pixels per side)
RESOLUTION = 32
#: seeded jitter of rendered scenes: bounding-box centre offset (fraction of width, uniform
#: in +-) and multiplicative half-extent factor range
POSITION_JITTER = 0.03
SIZE_JITTER = (0.9, 1.1)
#: fraction of combinations held out for evaluation, and the seed of the split
EVAL_FRACTION = 0.2
SPLIT_SEED = 20250721

#: the prompt grammar: each template is filled from one scene's attributes
TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {shape} on a {background} background, {position}",
    "a {size} {colour} {shape} at the {position} on a {background} background",
    "{background} background with a {size} {colour} {shape} in the {position}",
    "{position}: a {size} {colour} {shape}, {background} background",
)


@dataclass(frozen=True)
class Attributes:
    """What one scene shows: a ``size`` ``colour`` ``shape`` at ``position`` on ``background``."""

    shape: str
    colour: str
    size: str
    position: str
    background: str

    def __post_init__(self) -> None:
        for field, allowed in (
            ("shape", SHAPES), ("colour", COLOURS), ("size", SIZES),
            ("position", POSITIONS), ("background", BACKGROUNDS),
        ):  # fmt: skip
            if getattr(self, field) not in allowed:
                raise ValueError(f"unknown {field} {getattr(self, field)!r}; choose one of: {', '.join(allowed)}")


class PromptParseError(ValueError):
    """A prompt that the task's grammar cannot read."""


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------
def prompt_for(attrs: Attributes, template: int = 0) -> str:
    """The prompt for ``attrs`` in phrasing ``template`` (an index into :data:`TEMPLATES`)."""
    return TEMPLATES[template % len(TEMPLATES)].format(
        size=attrs.size, colour=attrs.colour, shape=attrs.shape,
        position=attrs.position, background=attrs.background,
    )  # fmt: skip


def tokenize(text: str) -> list[str]:
    """Lower-case words of ``text`` (letters only; punctuation separates words)."""
    return re.findall(r"[a-z]+", text.lower())


@lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """Every word the grammar uses, sorted."""
    return grammar_words(TEMPLATES, COLOURS, BACKGROUNDS, SHAPES, SIZES, POSITIONS)


def grammar_words(templates: Sequence[str], *names: Iterable[str]) -> tuple[str, ...]:
    """The sorted words of a grammar: its templates' fixed words (placeholders ``{...}`` left
    out) and the words of every name in ``names``."""
    words: set[str] = set()
    for template in templates:
        words.update(tokenize(re.sub(r"\{[a-z_]+\}", " ", template)))
    for group in names:
        for name in group:
            words.update(tokenize(name))
    return tuple(sorted(words))


_ROW_WORDS = {"top": 0, "bottom": 2}
_COL_WORDS = {"left": 0, "right": 2}
_POSITION_BY_CELL = {cell: name for name, cell in POSITIONS.items()}


@lru_cache(maxsize=4096)
def parse_prompt(text: str) -> Attributes:
    """Read a prompt of the task's grammar back into :class:`Attributes`.

    Word order is free except that the background colour is the colour word directly before
    ``"background"``. Position: ``top``/``bottom`` pick the row and ``left``/``right`` the column;
    a missing row or column word means the middle one (``"center"``/``"middle"`` may be said).
    Raises :class:`PromptParseError` naming what is missing or ambiguous.
    """
    words = tokenize(text)

    def one_of(kind: str, choices: Sequence[str], found: list[str]) -> str:
        if len(set(found)) != 1:
            what = "no" if not found else f"several ({', '.join(found)})"
            raise PromptParseError(f"prompt {text!r} names {what} {kind}; expected one of: {', '.join(choices)}")
        return found[0]

    shape = one_of("shape", SHAPES, [w for w in words if w in SHAPES])
    size = one_of("size", SIZES, [w for w in words if w in SIZES])
    backgrounds = [w for w, nxt in zip(words, words[1:]) if nxt == "background" and w in BACKGROUNDS]
    background = one_of("background colour", tuple(BACKGROUNDS), backgrounds)
    colour = one_of("shape colour", tuple(COLOURS), [w for w in words if w in COLOURS])
    rows = [_ROW_WORDS[w] for w in words if w in _ROW_WORDS]
    cols = [_COL_WORDS[w] for w in words if w in _COL_WORDS]
    if len(set(rows)) > 1 or len(set(cols)) > 1:
        raise PromptParseError(f"prompt {text!r} names contradictory positions")
    if not rows and not cols and not any(w in ("center", "centre", "middle") for w in words):
        raise PromptParseError(f"prompt {text!r} names no position; expected one of: {', '.join(POSITIONS)}")
    position = _POSITION_BY_CELL[(rows[0] if rows else 1, cols[0] if cols else 1)]
    return Attributes(shape=shape, colour=colour, size=size, position=position, background=background)


# --------------------------------------------------------------------------------------------
# Attribute combinations and the train / eval split
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def all_attributes() -> tuple[Attributes, ...]:
    """Every attribute combination, in a fixed canonical order."""
    return tuple(
        Attributes(shape=s, colour=c, size=z, position=p, background=b)
        for b in BACKGROUNDS for c in COLOURS for s in SHAPES for z in SIZES for p in POSITIONS
    )  # fmt: skip


@lru_cache(maxsize=1)
def _split() -> tuple[tuple[Attributes, ...], tuple[Attributes, ...]]:
    combos = list(all_attributes())
    order = list(range(len(combos)))
    random.Random(SPLIT_SEED).shuffle(order)
    n_eval = round(EVAL_FRACTION * len(combos))
    eval_idx = set(order[:n_eval])
    train = tuple(c for i, c in enumerate(combos) if i not in eval_idx)
    held_out = tuple(c for i, c in enumerate(combos) if i in eval_idx)
    return train, held_out


def train_attributes() -> tuple[Attributes, ...]:
    """The training combinations (80 %), canonical order."""
    return _split()[0]


def eval_attributes() -> tuple[Attributes, ...]:
    """The held-out evaluation combinations (20 %), canonical order; none is in the train set."""
    return _split()[1]


def _canonical_template(index: int) -> int:
    return index % len(TEMPLATES)


def train_prompts() -> list[str]:
    """One prompt per training combination (phrasings cycle through :data:`TEMPLATES`)."""
    return [prompt_for(a, _canonical_template(i)) for i, a in enumerate(train_attributes())]


def eval_prompts() -> list[str]:
    """One prompt per held-out combination (phrasings cycle through :data:`TEMPLATES`)."""
    return [prompt_for(a, _canonical_template(i)) for i, a in enumerate(eval_attributes())]


# --------------------------------------------------------------------------------------------
# Geometry and rendering
# --------------------------------------------------------------------------------------------
def nominal_geometry(attrs: Sequence[Attributes], resolution: int = RESOLUTION) -> dict[str, torch.Tensor]:
    """Un-jittered geometry of each scene, in pixels: ``cx``, ``cy`` (bounding-box centre),
    ``half`` (half extent), ``area`` (exact shape area) and ``shape`` (index into
    :data:`SHAPES`); float32 ``(batch,)`` tensors (``shape`` is int64)."""
    rows = torch.tensor([POSITIONS[a.position][0] for a in attrs], dtype=torch.long)
    cols = torch.tensor([POSITIONS[a.position][1] for a in attrs], dtype=torch.long)
    grid = torch.tensor(GRID_FRACTIONS, dtype=torch.float32) * resolution
    half = torch.tensor([SIZE_HALF_EXTENT[a.size] for a in attrs], dtype=torch.float32) * resolution
    shape = torch.tensor([SHAPES.index(a.shape) for a in attrs], dtype=torch.long)
    return {"cx": grid[cols], "cy": grid[rows], "half": half, "shape": shape, "area": shape_area(shape, half)}


def shape_area(shape: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """Exact area (pixels) of shapes with indices ``shape`` and half extents ``half``."""
    factor = torch.tensor([torch.pi, 4.0, 2.0], dtype=torch.float32)[shape]
    return factor * half.float() ** 2


def shape_masks(
    shape: torch.Tensor,
    cx: torch.Tensor,
    cy: torch.Tensor,
    half: torch.Tensor,
    resolution: int = RESOLUTION,
    softness: float = 0.0,
) -> torch.Tensor:
    """Masks ``(batch, H, W)`` in ``[0, 1]`` of shapes given per scene (all ``(batch,)`` tensors).

    ``softness == 0`` gives hard 0/1 masks tested at pixel centres; ``softness > 0`` gives a
    sigmoid of the signed distance to the edge (in pixels) with that width, i.e. roughly the
    pixel coverage for ``softness ~ 0.3``.
    """
    coords = torch.arange(resolution, dtype=torch.float32) + 0.5
    dx = coords.view(1, 1, -1) - cx.float().view(-1, 1, 1)
    dy = coords.view(1, -1, 1) - cy.float().view(-1, 1, 1)
    h = half.float().view(-1, 1, 1)
    # signed distance-like "inside" margins (positive inside), in pixels
    circle = h - torch.sqrt(dx * dx + dy * dy)
    square = h - torch.maximum(dx.abs(), dy.abs())
    # triangle: below the two slanted edges (slope 2 through the apex) and above the base
    slant = (h + dy - 2.0 * dx.abs()) / 5.0**0.5  # distance to the nearer slanted edge
    triangle = torch.minimum(slant, h - dy)
    margin = torch.where(
        shape.view(-1, 1, 1) == 0, circle, torch.where(shape.view(-1, 1, 1) == 1, square, triangle)
    )
    if softness > 0:
        return torch.sigmoid(margin / softness)
    return (margin > 0).float()


def colour_table(names: Sequence[str]) -> torch.Tensor:
    """RGB colours in ``[0, 1]`` (float32 ``(batch, 3)``) of colour or background names."""
    table = {**COLOURS, **BACKGROUNDS}
    return torch.tensor([table[n] for n in names], dtype=torch.float32) / 255.0


def render(
    attrs: Sequence[Attributes],
    resolution: int = RESOLUTION,
    generator: torch.Generator | None = None,
    jitter: bool = True,
) -> torch.Tensor:
    """Ground-truth images ``(batch, 3, H, W)`` uint8 of ``attrs``.

    With ``jitter`` (default) each scene's position and size are perturbed by a small random
    amount drawn from ``generator`` (deterministic for a seeded generator); without it the
    nominal geometry is drawn exactly.
    """
    if not attrs:
        return torch.zeros((0, 3, resolution, resolution), dtype=torch.uint8)
    geo = nominal_geometry(attrs, resolution)
    cx, cy, half = geo["cx"], geo["cy"], geo["half"]
    if jitter:
        u = torch.rand((3, len(attrs)), generator=generator)
        lo, hi = SIZE_JITTER
        cx = cx + (2 * u[0] - 1) * POSITION_JITTER * resolution
        cy = cy + (2 * u[1] - 1) * POSITION_JITTER * resolution
        half = half * (lo + (hi - lo) * u[2])
    mask = shape_masks(geo["shape"], cx, cy, half, resolution).unsqueeze(1)
    fg = colour_table([a.colour for a in attrs]).view(-1, 3, 1, 1)
    bg = colour_table([a.background for a in attrs]).view(-1, 3, 1, 1)
    image = bg * (1 - mask) + fg * mask
    return (image * 255.0).round().to(torch.uint8)


def sample_scenes(
    batch: int, generator: torch.Generator, split: str = "train", resolution: int = RESOLUTION
) -> tuple[list[str], torch.Tensor]:
    """A random batch of ``(prompts, uint8 images)`` from ``split`` (``"train"`` or ``"eval"``).

    Combinations and phrasings (any of :data:`TEMPLATES`) are drawn uniformly from
    ``generator``; images are jittered renders. Used by pre-training.
    """
    return draw_scenes(sys.modules[__name__], batch, generator, split, resolution)


def draw_scenes(
    task_module: ModuleType, batch: int, generator: torch.Generator, split: str, resolution: int
) -> tuple[list[str], torch.Tensor]:
    """``sample_scenes`` of a task module (its ``train_attributes``, ``eval_attributes``,
    ``TEMPLATES``, ``prompt_for`` and ``render``): combinations, then phrasings, then the renders'
    jitter, drawn from ``generator`` in that order."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    pool = task_module.train_attributes() if split == "train" else task_module.eval_attributes()
    idx = torch.randint(len(pool), (batch,), generator=generator).tolist()
    tmpl = torch.randint(len(task_module.TEMPLATES), (batch,), generator=generator).tolist()
    attrs = [pool[i] for i in idx]
    prompts = [task_module.prompt_for(a, t) for a, t in zip(attrs, tmpl)]
    return prompts, task_module.render(attrs, resolution, generator=generator)
