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
  bicubic antialiased as PIL does on 8-bit images: two separable passes, width first, in PIL's
  fixed-point arithmetic and 8-bit rounding (:func:`resize_bicubic_like_pil`), computed in torch;
  uint8 out, equal to PIL's bit for bit. What transformers' CLIP image processor (PIL backend)
  does first (CLIP score, PickScore).
* ``"shortest_edge_pil"`` — the same geometry with PIL itself (``Image.resize(..., BICUBIC)``
  per image); uint8 out. ImageReward's torchvision ``Resize`` on a PIL image.
* ``"longest_edge_float"`` — the longer side to ``size`` (each side ``round(side * size / long)``),
  one antialiased bicubic pass on ``[0, 1]`` floats, no rounding; float32 out. open_clip's
  ``ToTensor`` then ``ResizeMaxSize`` (HPS v2.1) — the float result is what makes it exact, at 4
  bytes a value.

A model without a declaration (``input_size = None``) gets the images as sampled.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from mixgrpo_ray.common.images import as_float01, as_uint8

RESIZES = ("shortest_edge", "shortest_edge_pil", "longest_edge_float")


#: PIL's fixed point for 8-bit resampling (libImaging/Resample.c): coefficients carry 22
#: fractional bits, sums start at one half, results are clipped to 0..255
PIL_PRECISION_BITS = 32 - 8 - 2


def _pil_bicubic(x: float) -> float:
    """PIL's bicubic kernel (a = -0.5), support 2."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


@functools.lru_cache(maxsize=64)
def pil_bicubic_weights(in_size: int, out_size: int) -> torch.Tensor:
    """``(out_size, in_size)`` float64 matrix of the fixed-point integer coefficients PIL uses to
    resample one axis from ``in_size`` to ``out_size`` pixels (antialiased when shrinking): the
    kernel stretched by the scale, the window ``[center - support, center + support)`` rounded as
    PIL rounds it, normalised to sum 1, then scaled by 2^22 and rounded half away from zero."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ss = 1.0 / filterscale  # PIL multiplies by the reciprocal (the last bit of a double matters)
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    one = float(1 << PIL_PRECISION_BITS)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        k = np.array([_pil_bicubic((x + xmin - center + 0.5) * ss) for x in range(xmax - xmin)])
        total = k.sum()
        if total != 0.0:
            k = k / total
        weights[xx, xmin:xmax] = np.where(k < 0, np.trunc(-0.5 + k * one), np.trunc(0.5 + k * one))
    return torch.from_numpy(weights)


def _pil_pass(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One axis (the last) of PIL's 8-bit resample on integer levels ``x``, in float64: every
    product and sum is an integer below 2^53, so the result is PIL's exactly."""
    acc = x @ weights.to(x.device).T + float(1 << (PIL_PRECISION_BITS - 1))
    return torch.floor(acc / float(1 << PIL_PRECISION_BITS)).clamp_(0.0, 255.0)


def resize_bicubic_like_pil(images: torch.Tensor, size: tuple[int, int], quantize: bool = True) -> torch.Tensor:
    """Bicubic antialiased resize of float ``(B, C, H, W)`` images in ``[0, 255]`` to ``size=(h, w)``.

    With ``quantize`` the images must hold integer levels (0..255) and the result is PIL's
    ``Image.resize(..., BICUBIC)`` on 8-bit images bit for bit: the width pass, then the height
    pass, each with PIL's fixed-point coefficients (:func:`pil_bicubic_weights`), PIL's rounding
    and clipping to 8 bits (PIL keeps the intermediate image in 8 bits). Without, one float pass
    (clamped, not rounded).
    """
    out_h, out_w = size
    if images.shape[-2:] == (out_h, out_w):
        return images
    if not quantize:
        out = F.interpolate(images, size=(out_h, out_w), mode="bicubic", antialias=True, align_corners=False)
        return out.clamp(0.0, 255.0)
    x = images.to(torch.float64)
    if x.shape[-1] != out_w:
        x = _pil_pass(x, pil_bicubic_weights(x.shape[-1], out_w))
    if x.shape[-2] != out_h:
        x = _pil_pass(x.transpose(-1, -2), pil_bicubic_weights(x.shape[-2], out_h)).transpose(-1, -2)
    return x.to(images.dtype)


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
