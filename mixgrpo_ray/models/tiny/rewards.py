"""Offline rewards of the embedded tiny model's task (``mixgrpo_ray.models.tiny.task``), from pixels.

* :class:`PromptFollowingReward` (``"prompt_following"``): does the image show what the prompt
  asks — the background colour, an object of the requested colour, of the requested size, at
  the requested position, of the requested shape? Each part is graded in ``[0, 1]``; the score
  is their mean.
* :class:`QualityReward` (``"quality"``): is the image clean — pixels in the task's palette
  (no noise, no blurred edges), only one background and one object colour, one compact object
  rather than stray blobs? It reads the image only (the prompt is not used).
* :class:`ObjectSizeReward` (``"object_size"``): a diagnostic, not a preference — how much larger
  (or smaller) than requested the object is, ``log2`` of the area ratio; used with weight 0.

All three are deterministic, vectorised over the batch and run on CPU in milliseconds. Colours are
compared in RGB ``[0, 1]`` with a soft kernel of the Euclidean distance ``d``: 1 up to
``inner``, falling as ``(1 - (d - inner) / (outer - inner))^2`` to 0 at ``outer``, so a pixel
near a colour counts fully and one far away not at all.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from mixgrpo_ray.models.tiny import task
from mixgrpo_ray.models.reward import RewardModel, as_float01


def positive_options(reward: str, **options: float) -> dict[str, float]:
    """``options`` as floats, each > 0 (else ``ValueError`` naming ``reward`` and the option), with
    ``colour_tolerance < colour_radius`` (the inner and outer radius of :func:`colour_affinity`)."""
    for key, value in options.items():
        if not float(value) > 0:
            raise ValueError(f"{reward}: {key} must be > 0, got {value!r}")
    if not options["colour_tolerance"] < options["colour_radius"]:
        raise ValueError(f"{reward}: colour_tolerance must be < colour_radius")
    return {key: float(value) for key, value in options.items()}


def colour_affinity(images: torch.Tensor, colours: torch.Tensor, inner: float, outer: float) -> torch.Tensor:
    """Soft membership ``(batch, K, H, W)`` of each pixel of ``images`` ``(batch, 3, H, W)`` in
    each of ``K`` colours (``colours`` is ``(batch, K, 3)`` or ``(K, 3)``, RGB in ``[0, 1]``):
    1 within distance ``inner`` of the colour, 0 beyond ``outer``, a squared ramp between."""
    if colours.ndim == 2:
        colours = colours.unsqueeze(0).expand(images.shape[0], -1, -1)
    diff = images.unsqueeze(1) - colours[..., None, None]  # (B, K, 3, H, W)
    dist = diff.square().sum(dim=2).sqrt()
    return (1.0 - (dist - inner) / (outer - inner)).clamp(0.0, 1.0).square()


def open_mask(mask: torch.Tensor) -> torch.Tensor:
    """Morphological opening with a 2x2 square (2x2 min, then 2x2 max) of soft masks
    ``(batch, H, W)``: removes isolated specks and one-pixel threads, keeps solid regions."""
    m = mask.unsqueeze(1)
    eroded = -F.max_pool2d(F.pad(-m, (0, 1, 0, 1), mode="replicate"), 2, stride=1)
    return F.max_pool2d(F.pad(eroded, (1, 0, 1, 0), mode="replicate"), 2, stride=1).squeeze(1)


def border_colour(images: torch.Tensor) -> torch.Tensor:
    """Per-image median colour ``(batch, 3)`` of the one-pixel border of ``images``."""
    border = torch.cat(
        [images[:, :, 0, :], images[:, :, -1, :], images[:, :, 1:-1, 0], images[:, :, 1:-1, -1]], dim=2
    )
    return border.median(dim=2).values


def _pixel_grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    return ys.view(1, -1, 1), xs.view(1, 1, -1)


def mask_moments(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mass ``A`` and centroid ``(cx, cy)`` in pixels of soft masks ``(batch, H, W)``
    (centroid of an empty mask: the image centre)."""
    ys, xs = _pixel_grid(*mask.shape[-2:])
    area = mask.sum(dim=(1, 2))
    safe = area.clamp(min=1e-6)
    cx = (mask * xs).sum(dim=(1, 2)) / safe
    cy = (mask * ys).sum(dim=(1, 2)) / safe
    empty = area < 1e-6
    cx = torch.where(empty, torch.full_like(cx, mask.shape[-1] / 2), cx)
    cy = torch.where(empty, torch.full_like(cy, mask.shape[-2] / 2), cy)
    return area, cx, cy


def shape_match(
    mask: torch.Tensor,
    mass: torch.Tensor,
    cx: torch.Tensor,
    cy: torch.Tensor,
    asked: torch.Tensor,
    temperature: float,
    fit: float,
) -> torch.Tensor:
    """How much better shape ``asked`` (``(batch,)`` indices into the task's shapes) explains the
    soft colour ``mask`` ``(batch, H, W)`` of mass ``mass`` and centroid ``(cx, cy)`` than the
    other shapes, in ``[0, 1]``: the soft IoU of ``mask`` with an equal-mass template of each
    shape centred on the centroid, through a softmax with ``temperature``, taken at ``asked``,
    times ``min(1, IoU_asked / fit)`` (a diffuse blob fits no shape)."""
    batch, width = mask.shape[0], mask.shape[-1]
    ious = []
    for k in range(len(task.SHAPES)):
        kind = torch.full((batch,), k, dtype=torch.long)
        half = torch.sqrt(mass.clamp(min=1.0) / task.shape_area(kind, torch.ones(batch)))
        # the triangle's centroid lies h/3 below its bounding-box centre
        box_cy = cy - half / 3.0 if task.SHAPES[k] == "triangle" else cy
        tmpl = task.shape_masks(kind, cx, box_cy, half, width, softness=0.3)
        inter = torch.minimum(mask, tmpl).sum(dim=(1, 2))
        union = torch.maximum(mask, tmpl).sum(dim=(1, 2)).clamp(min=1e-6)
        ious.append(inter / union)
    iou = torch.stack(ious, dim=1)  # (B, n_shapes)
    asked = asked.view(-1, 1)
    prob = torch.softmax(iou / temperature, dim=1).gather(1, asked).squeeze(1)
    return prob * (iou.gather(1, asked).squeeze(1) / fit).clamp(max=1.0)


class PromptFollowingReward(RewardModel):
    """How well each image shows its prompt's scene; graded in ``[0, 1]`` (1: all parts right).

    Masks (colours matched with the kernel ``colour_tolerance`` / ``colour_radius``): ``m`` the
    requested object colour after a morphological opening (scattered specks do not count), with
    mass ``M`` and centroid ``c``; the *foreground* ``f``, every pixel that does not have the
    image's own background colour (the median of its border pixels), opened too, with area
    ``A``. ``A*`` is the requested shape's area and ``c*`` the requested grid centre at the
    image's resolution. Parts (equal weight):

    * background — the requested background colour's mass over the pixels the background
      should cover, ``min(1, sum(bg) / (H W - A*))``; a wrong colour, noise or a too-large
      object lower it;
    * colour — presence of the requested colour, ``min(1, M / (presence * A*))``;
    * size — ``exp(-ln((A+1)/(A*+1))^2 / (2 size_tol^2))`` on the whole foreground, so a
      bigger, smeared or haloed object does not pass for the requested size; times colour;
    * position — ``exp(-|c - c*|^2 / (2 (position_tol W)^2))``, times colour;
    * shape — how much better the requested shape explains the colour mask than the others:
      the soft IoU of the (un-opened) colour mask with an equal-mass template of each shape at
      ``c``, through a softmax with temperature ``shape_temperature``, taken at the requested
      shape, times ``min(1, IoU_requested / shape_fit)`` (a diffuse blob fits no shape), times
      colour.

    An object of the wrong colour therefore earns at most the background part.

    Prompts must follow the task's grammar (:func:`mixgrpo_ray.models.tiny.task.parse_prompt`);
    anything else raises ``ValueError``.
    """

    name = "prompt_following"
    score_range = (0.0, 1.0)

    def __init__(
        self,
        colour_tolerance: float = 0.15,
        colour_radius: float = 0.3,
        presence: float = 0.5,
        size_tol: float = 0.35,
        position_tol: float = 0.1,
        shape_temperature: float = 0.04,
        shape_fit: float = 0.7,
    ) -> None:
        vars(self).update(positive_options(
            self.name, colour_tolerance=colour_tolerance, colour_radius=colour_radius, presence=presence,
            size_tol=size_tol, position_tol=position_tol, shape_temperature=shape_temperature, shape_fit=shape_fit,
        ))

    def parts(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The five graded parts (each ``(batch,)`` in ``[0, 1]``) for images and prompts."""
        images, attrs, geo = self.requested(images, prompts)
        height, width = images.shape[-2:]
        kernel = (self.colour_tolerance, self.colour_radius)
        obj = colour_affinity(images, task.colour_table([a.colour for a in attrs]).unsqueeze(1), *kernel)[:, 0]
        bg = colour_affinity(images, task.colour_table([a.background for a in attrs]).unsqueeze(1), *kernel)[:, 0]
        mask = open_mask(obj)
        expected = geo["area"]

        background = (bg.sum(dim=(1, 2)) / (height * width - expected)).clamp(max=1.0)
        mass, cx, cy = mask_moments(mask)
        colour = (mass / (self.presence * expected)).clamp(max=1.0)
        area = self.foreground_area(images)
        size = torch.exp(-torch.log((area + 1.0) / (expected + 1.0)).square() / (2 * self.size_tol**2))
        dist2 = (cx - geo["cx"]).square() + (cy - geo["cy"]).square()
        position = torch.exp(-dist2 / (2 * (self.position_tol * width) ** 2))

        shape = shape_match(obj, mass, cx, cy, geo["shape"], self.shape_temperature, self.shape_fit)
        return {
            "background": background,
            "colour": colour,
            "size": size * colour,
            "position": position * colour,
            "shape": shape * colour,
        }

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        parts = self.parts(images, prompts)
        return torch.stack(list(parts.values()), dim=1).mean(dim=1)

    def requested(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[torch.Tensor, list, dict]:
        """``images`` as float in ``[0, 1]`` (square, else ``ValueError``), each prompt's parsed
        attributes and the requested geometry at the images' resolution
        (:func:`~mixgrpo_ray.models.tiny.task.nominal_geometry`)."""
        images = as_float01(images)
        height, width = images.shape[-2:]
        if height != width:
            raise ValueError(f"{self.name}: images must be square, got {height}x{width}")
        attrs = [task.parse_prompt(p) for p in prompts]
        return images, attrs, task.nominal_geometry(attrs, width)

    def foreground_area(self, images: torch.Tensor) -> torch.Tensor:
        """``A``: pixels ``(batch,)`` of the opened foreground, every pixel that does not have the
        image's own background colour (``images`` float in ``[0, 1]``)."""
        kernel = (self.colour_tolerance, self.colour_radius)
        fg = open_mask(1.0 - colour_affinity(images, border_colour(images).unsqueeze(1), *kernel)[:, 0])
        return fg.sum(dim=(1, 2))


class ObjectSizeReward(PromptFollowingReward):
    """Diagnostic of size drift (``"object_size"``): ``log2((A + 1) / (A* + 1))``, the foreground
    area ``A`` measured exactly as :class:`PromptFollowingReward`'s size part measures it, against
    the requested shape's area ``A*``. 0 is the requested size, +1 an object twice as large, -1
    half as large. Not a preference: configure it with ``weight: 0`` so that it is scored and
    reported (``reward/object_size``, ``eval/reward/object_size``) but never trained on; it shows
    the reward-hacking sign of this task (objects growing beyond what the prompt asks) as a number.
    Options are :class:`PromptFollowingReward`'s (only the colour kernel matters here)."""

    name = "object_size"
    score_range = (float("-inf"), float("inf"))

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        images, _, geo = self.requested(images, prompts)
        return torch.log2((self.foreground_area(images) + 1.0) / (geo["area"] + 1.0))


class QualityReward(RewardModel):
    """How clean each image is, whatever it shows; graded in ``[0, 1]`` (1: a crisp task image).

    With the task's palette (shape and background colours) and each pixel's soft membership
    in each palette colour (kernel ``colour_tolerance`` / ``colour_radius``):

    * purity — mean over pixels of the membership in the nearest palette colour: noise,
      smudges and blurred edges (in-between colours) lower it;
    * two colours — the background is the palette colour with most mass, the object colour the
      next; ``exp(-f / stray_scale)`` for the fraction ``f`` of pixels belonging to any other
      palette colour (stray blobs of a third colour);
    * one compact object — the fraction of the object colour's mass within
      ``1.6 R + 1.5`` pixels of its centroid (``R`` the radius of a disc of that mass; scattered
      blobs fall outside), times ``min(1, A / min_object_area)`` so that an empty image is not
      "clean".

    The score is the mean of the three.
    """

    name = "quality"
    score_range = (0.0, 1.0)

    def __init__(
        self,
        colour_tolerance: float = 0.05,
        colour_radius: float = 0.2,
        stray_scale: float = 0.02,
        min_object_area: float = 20.0,
    ) -> None:
        vars(self).update(positive_options(
            "quality", colour_tolerance=colour_tolerance, colour_radius=colour_radius, stray_scale=stray_scale,
            min_object_area=min_object_area,
        ))
        self.palette = task.colour_table(list(task.BACKGROUNDS) + list(task.COLOURS))

    def parts(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The three graded parts (each ``(batch,)`` in ``[0, 1]``); ``prompts`` are unused."""
        images = as_float01(images)
        batch, _, height, width = images.shape
        n_pixels = height * width
        aff = colour_affinity(images, self.palette, self.colour_tolerance, self.colour_radius)  # (B, K, H, W)
        purity = aff.max(dim=1).values.mean(dim=(1, 2))

        mass = aff.sum(dim=(2, 3))  # (B, K)
        top2 = mass.topk(2, dim=1).indices
        stray = (mass.sum(dim=1) - mass.gather(1, top2).sum(dim=1)) / n_pixels
        two_colours = torch.exp(-stray / self.stray_scale)

        obj = aff[torch.arange(batch), top2[:, 1]]
        area, cx, cy = mask_moments(obj)
        ys, xs = _pixel_grid(height, width)
        dist = torch.sqrt((xs - cx.view(-1, 1, 1)).square() + (ys - cy.view(-1, 1, 1)).square())
        reach = 1.6 * torch.sqrt(area / torch.pi) + 1.5
        inside = (obj * (dist <= reach.view(-1, 1, 1))).sum(dim=(1, 2)) / area.clamp(min=1e-6)
        compact = inside * (area / self.min_object_area).clamp(max=1.0)
        return {"purity": purity, "two_colours": two_colours, "compact": compact}

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        parts = self.parts(images, prompts)
        return torch.stack(list(parts.values()), dim=1).mean(dim=1)
