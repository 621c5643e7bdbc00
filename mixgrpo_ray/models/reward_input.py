"""The input a reward model declares: the resize its own preprocessing does first.

A CLIP-family reward looks at a 224-pixel image whatever the policy sampled (FLUX: 1024x1024);
shipping the full image to its replicas moves about 20x more bytes than the model will read. So a
reward model declares :class:`RewardInput` — a square side ``size`` and the ``resize`` that its
preprocessing applies first — and rollout actors send each reward pool images already resized
(:meth:`RewardInput.apply`). Every resize here is a no-op on an image that already has the target
shape, and :meth:`~mixgrpo_ray.models.reward.RewardModel.__call__` applies the model's declared
resize itself before scoring, so a score never depends on where the resize ran: full-resolution
and pre-resized images give the same scores (bit for bit on one device).

Resizes (``resize``; each keeps the aspect ratio):

* ``"shortest_edge"`` — the shorter side to ``size`` (the longer ``int(size * long / short)``),
  bicubic antialiased as PIL does on 8-bit images: two separable passes, width first, each
  rounded and clamped to 8-bit levels (:func:`resize_bicubic_like_pil`), computed in torch; uint8
  out. What transformers' CLIP image processor (PIL backend) does first (CLIP score, PickScore);
  agrees with PIL itself to one 8-bit level.
* ``"shortest_edge_pil"`` — the same geometry with PIL itself (``Image.resize(..., BICUBIC)``
  per image); uint8 out. ImageReward's torchvision ``Resize`` on a PIL image.
* ``"longest_edge_float"`` — the longer side to ``size`` (each side ``round(side * size / long)``),
  one antialiased bicubic pass on ``[0, 1]`` floats, no rounding; float32 out. open_clip's
  ``ToTensor`` then ``ResizeMaxSize`` (HPS v2.1) — the float result is what makes it exact, at 4
  bytes a value.

A model without a declaration (``input_size = None``) gets the images as sampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from mixgrpo_ray.common.images import as_float01, as_uint8

RESIZES = ("shortest_edge", "shortest_edge_pil", "longest_edge_float")


def resize_bicubic_like_pil(images: torch.Tensor, size: tuple[int, int], quantize: bool = True) -> torch.Tensor:
    """Bicubic antialiased resize of float ``(B, C, H, W)`` images in ``[0, 255]`` to ``size=(h, w)``.

    With ``quantize`` it mirrors PIL on 8-bit images: the width pass, then the height pass, each
    result clamped to ``[0, 255]`` and rounded (PIL keeps the intermediate image in 8 bits).
    Without, one float pass (clamped, not rounded).
    """
    out_h, out_w = size
    if images.shape[-2:] == (out_h, out_w):
        return images
    if not quantize:
        out = F.interpolate(images, size=(out_h, out_w), mode="bicubic", antialias=True, align_corners=False)
        return out.clamp(0.0, 255.0)
    x = images
    if x.shape[-1] != out_w:
        x = F.interpolate(x, size=(x.shape[-2], out_w), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp(0.0, 255.0).round()
    if x.shape[-2] != out_h:
        x = F.interpolate(x, size=(out_h, out_w), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp(0.0, 255.0).round()
    return x


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``(h, w)`` with the shorter side ``size`` and the longer ``int(size * long / short)`` (CLIP
    image processors, torchvision ``Resize(int)``)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def longest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``(h, w)`` with the longer side ``size``: ``round(side * (size / max(h, w)))`` (open_clip
    ``ResizeMaxSize``)."""
    scale = size / float(max(height, width))
    return round(height * scale), round(width * scale)


def resize_with_pil(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``(B, 3, h, w)``: each image resized to ``size=(h, w)`` by PIL bicubic (unchanged
    when it already has that shape)."""
    from PIL import Image

    x = as_uint8(images).cpu()
    if x.shape[-2:] == tuple(size):
        return x
    out = []
    for img in x:
        pil = Image.fromarray(img.permute(1, 2, 0).contiguous().numpy())
        pil = pil.resize((size[1], size[0]), Image.BICUBIC)
        out.append(torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1))
    return torch.stack(out)


@dataclass(frozen=True)
class RewardInput:
    """The resize a reward model's preprocessing does first (see the module docstring)."""

    size: int
    resize: str = "shortest_edge"

    def __post_init__(self) -> None:
        if int(self.size) < 1:
            raise ValueError(f"reward input size must be >= 1, got {self.size}")
        if self.resize not in RESIZES:
            raise ValueError(f"reward input resize must be one of {', '.join(RESIZES)}, got {self.resize!r}")

    def __str__(self) -> str:
        return f"{self.resize}@{self.size}"

    def shape(self, height: int, width: int) -> tuple[int, int]:
        """The ``(h, w)`` an image of ``height x width`` is resized to."""
        if self.resize == "longest_edge_float":
            return longest_edge_size(height, width, self.size)
        return shortest_edge_size(height, width, self.size)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (``(B, 3, H, W)`` uint8 or float in ``[0, 1]``) resized: uint8 for the
        shortest-edge resizes, float32 in ``[0, 1]`` for ``longest_edge_float``. An image that
        already has the target shape is only converted, so applying it twice equals once."""
        new = self.shape(*images.shape[-2:])
        if self.resize == "longest_edge_float":
            if tuple(images.shape[-2:]) == new:  # already resized: bicubic overshoot is kept, as ToTensor keeps it
                return images.to(torch.float32) / 255.0 if images.dtype == torch.uint8 else images.to(torch.float32)
            return F.interpolate(as_float01(images), size=new, mode="bicubic", antialias=True, align_corners=False)
        if self.resize == "shortest_edge_pil":
            return resize_with_pil(images, new)
        if images.dtype == torch.uint8 and tuple(images.shape[-2:]) == new:
            return images
        x = (as_float01(images) * 255.0).round()
        return resize_bicubic_like_pil(x, new, quantize=True).to(torch.uint8)

    def to_dict(self) -> dict:
        return {"size": int(self.size), "resize": self.resize}

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> Optional["RewardInput"]:
        return None if d is None else cls(int(d["size"]), str(d["resize"]))


def declared_input(obj: Any) -> Optional[RewardInput]:
    """The :class:`RewardInput` ``obj`` declares by its attributes ``input_size`` (``None``: the
    images as sampled) and ``input_resize`` (default ``"shortest_edge"``); plug-ins that declare
    nothing get the images as sampled."""
    size = getattr(obj, "input_size", None)
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"reward {getattr(obj, 'name', type(obj).__name__)!r}: input_size must be an int or None, "
                         f"got {size!r}")
    return RewardInput(int(size), str(getattr(obj, "input_resize", "shortest_edge") or "shortest_edge"))
