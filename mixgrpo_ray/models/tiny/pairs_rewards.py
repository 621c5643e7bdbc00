"""Offline rewards of the tiny model's "pairs" task (:mod:`mixgrpo_ray.models.tiny.pairs_task`), from pixels.

* :class:`PairFollowingReward` (``"pair_following"``): does the image show what the prompt asks —
  the background colour, each object's colour with about the requested area, A on the named
  side of B, each object's shape? Each part is graded in ``[0, 1]``; the score is their mean.
* :class:`PairLayoutReward` (``"pair_layout"``): a diagnostic — the layout part alone, the
  composition number (is the right colour on the right side?); used with weight 0.

Both are deterministic, vectorised over the batch and run on CPU in milliseconds. Colours are
matched with the soft kernel of :func:`mixgrpo_ray.models.tiny.rewards.colour_affinity`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mixgrpo_ray.models.reward import RewardModel, as_float01
from mixgrpo_ray.models.tiny import pairs_task
from mixgrpo_ray.models.tiny.rewards import colour_affinity, mask_moments, open_mask, positive_options, shape_match


class PairFollowingReward(RewardModel):
    """How well each image shows its prompt's pair scene; graded in ``[0, 1]`` (1: all parts right).

    Masks (colours matched with the kernel ``colour_tolerance`` / ``colour_radius``): for each
    object X in {A, B}, ``m_X`` its requested colour after a morphological opening (scattered
    specks do not count), with mass ``M_X`` and centroid ``c_X``; ``A*_X`` the requested shape's
    area at the task's nominal size. Presence ``p_X = min(1, M_X / (presence * A*_X))``. Parts
    (equal weight):

    * background — the requested background colour's mass over the pixels the background should
      cover, ``min(1, sum(bg) / (H W - A*_A - A*_B))``;
    * colour A, colour B — the colour is there with about the requested area,
      ``exp(-ln((M_X + 1) / (A*_X + 1))^2 / (2 size_tol^2))`` (0 when absent);
    * layout — A's centroid on the named side of B's: ``sigmoid(d / layout_scale)`` of the signed
      displacement ``d`` in pixels along the relation's axis (positive on the named side), times
      ``p_A p_B`` (0 when either colour is absent);
    * shape A, shape B — how much better the requested shape explains the (un-opened) colour mask
      than the other shapes
      (:func:`~mixgrpo_ray.models.tiny.rewards.shape_match` with ``shape_temperature`` and
      ``shape_fit``), times ``p_X``.

    Prompts must follow the task's grammar (:func:`mixgrpo_ray.models.tiny.pairs_task.parse_prompt`);
    anything else raises ``ValueError``.
    """

    name = "pair_following"
    score_range = (0.0, 1.0)

    def __init__(
        self,
        colour_tolerance: float = 0.15,
        colour_radius: float = 0.3,
        presence: float = 0.5,
        size_tol: float = 0.5,
        layout_scale: float = 2.0,
        shape_temperature: float = 0.04,
        shape_fit: float = 0.7,
    ) -> None:
        vars(self).update(positive_options(
            self.name, colour_tolerance=colour_tolerance, colour_radius=colour_radius, presence=presence,
            size_tol=size_tol, layout_scale=layout_scale, shape_temperature=shape_temperature, shape_fit=shape_fit,
        ))

    def requested(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[torch.Tensor, list, dict]:
        """``images`` as float in ``[0, 1]`` (square, else ``ValueError``), each prompt's parsed
        attributes and the requested geometry at the images' resolution
        (:func:`~mixgrpo_ray.models.tiny.pairs_task.nominal_geometry`)."""
        images = as_float01(images)
        height, width = images.shape[-2:]
        if height != width:
            raise ValueError(f"{self.name}: images must be square, got {height}x{width}")
        attrs = [pairs_task.parse_prompt(p) for p in prompts]
        return images, attrs, pairs_task.nominal_geometry(attrs, width)

    def _colour_masks(self, images: torch.Tensor, attrs: list, field: str) -> torch.Tensor:
        colours = pairs_task.colour_table([getattr(a, field) for a in attrs]).unsqueeze(1)
        return colour_affinity(images, colours, self.colour_tolerance, self.colour_radius)[:, 0]

    def parts(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The six graded parts (each ``(batch,)`` in ``[0, 1]``) for images and prompts."""
        images, attrs, geo = self.requested(images, prompts)
        height, width = images.shape[-2:]
        bg = self._colour_masks(images, attrs, "background")
        background = (bg.sum(dim=(1, 2)) / (height * width - geo["area_a"] - geo["area_b"])).clamp(max=1.0)
        out = {"background": background}
        found = {}
        for x in ("a", "b"):
            obj = self._colour_masks(images, attrs, f"colour_{x}")
            mass, cx, cy = mask_moments(open_mask(obj))
            expected = geo[f"area_{x}"]
            present = (mass / (self.presence * expected)).clamp(max=1.0)
            log_ratio = torch.log((mass + 1.0) / (expected + 1.0))
            out[f"colour_{x}"] = torch.exp(-log_ratio.square() / (2 * self.size_tol**2))
            shape = shape_match(obj, mass, cx, cy, geo[f"shape_{x}"], self.shape_temperature, self.shape_fit)
            found[x] = (present, cx, cy, shape * present)
        out["layout"] = self.layout(found["a"], found["b"], geo)
        out["shape_a"], out["shape_b"] = found["a"][3], found["b"][3]
        return out

    def layout(self, a: tuple, b: tuple, geo: dict) -> torch.Tensor:
        """``sigmoid(d / layout_scale) p_A p_B`` from each object's ``(presence, cx, cy, ...)``."""
        return torch.sigmoid(self.displacement(a, b, geo) / self.layout_scale) * a[0] * b[0]

    @staticmethod
    def displacement(a: tuple, b: tuple, geo: dict) -> torch.Tensor:
        """``d``: A's centroid minus B's along the relation's axis, in pixels, positive on the named
        side, from each object's ``(presence, cx, cy, ...)``."""
        return torch.where(geo["axis"] == 0, a[1] - b[1], a[2] - b[2]) * geo["sign"]

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        parts = self.parts(images, prompts)
        return torch.stack(list(parts.values()), dim=1).mean(dim=1)


class PairLayoutReward(PairFollowingReward):
    """Diagnostic of composition (``"pair_layout"``): :class:`PairFollowingReward`'s layout part
    alone — whether A's colour centroid lies on the side of B's that the prompt names, graded
    softly (``sigmoid`` of the signed displacement along the axis over ``layout_scale`` pixels;
    0.5 when the two centroids coincide), 0 when either colour is absent. Configure it with
    ``weight: 0`` so that it is scored and reported (``reward/pair_layout``,
    ``eval/reward/pair_layout``) but never trained on. Options are :class:`PairFollowingReward`'s
    (only the colour kernel, ``presence`` and ``layout_scale`` matter here)."""

    name = "pair_layout"

    def located(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[dict, dict]:
        """Each object's ``(presence, cx, cy)`` (``{"a": ..., "b": ...}``, each ``(batch,)``) from
        its colour's opened mask, and the requested geometry."""
        images, attrs, geo = self.requested(images, prompts)
        found = {}
        for x in ("a", "b"):
            mass, cx, cy = mask_moments(open_mask(self._colour_masks(images, attrs, f"colour_{x}")))
            found[x] = ((mass / (self.presence * geo[f"area_{x}"])).clamp(max=1.0), cx, cy)
        return found, geo

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        found, geo = self.located(images, prompts)
        return self.layout(found["a"], found["b"], geo)
