"""CLIP pixel preprocessing with torch alone (no torchvision, no PIL round trip): CLIP's
shortest-edge resize + centre crop (PIL's bicubic on 8-bit images bit for bit: two separable
antialiased passes in PIL's fixed-point arithmetic, each rounded to 8-bit levels as PIL stores them), or open_clip's longest-edge resize + zero pad (HPS,
on floats as the original). Used by :mod:`mixgrpo_ray.rewards.clip.clip_common`."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mixgrpo_ray.models.reward import as_float01
from mixgrpo_ray.models.reward_input import (  # noqa: F401 - resize_bicubic_like_pil re-exported
    RewardInput,
    longest_edge_size,
    resize_bicubic_like_pil,
    shortest_edge_size,
)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImagePreprocess:
    """Images ``(B, 3, H, W)`` (uint8, or float in ``[0, 1]``) -> normalised float32 ``(B, 3, S, S)``.

    ``mode="crop"`` (CLIP image processors): resize so the shorter side is ``resize_to`` (the longer
    side ``int(resize_to * long / short)``), then centre-crop ``size`` (offsets ``(H - S) // 2``).
    ``mode="pad"`` (open_clip ``ResizeMaxSize``, used by HPS): resize so the longer side is ``size``
    (with ``scale = size / max(H, W)``, each side ``round(side * scale)``), then zero-pad to ``size``
    square, centred (``pad // 2`` left/top, the rest right/bottom). Padding is black in pixel space,
    before normalisation. Then ``(x - mean) / std`` per channel on ``[0, 1]`` values.

    ``pipeline`` picks how resampling is done:

    * ``"pil"`` (default; transformers' CLIP image processor on PIL images): inputs and each
      separable bicubic pass in PIL's fixed point, rounded and clamped to 8-bit levels
      (``quantize``): PIL's result exactly;
    * ``"tensor"`` (open_clip's ``ToTensor()`` then ``ResizeMaxSize``, HPS v2.1): the ``[0, 1]``
      float image is resized in one antialiased bicubic pass (torchvision's tensor ``resize``,
      i.e. ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)``), zero-padded and
      normalised with no rounding or clamping anywhere. uint8 inputs become ``x / 255`` exactly as
      ``ToTensor`` makes them; float inputs are used as they are. Only ``mode="pad"``.
      Where the longer side already equals ``size`` the original skips both resize and pad (and a
      non-square image would then not fit the model); here such an image is still padded.
    """

    size: int = 224
    mode: str = "crop"
    resize_to: int | None = None
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    quantize: bool = True
    pipeline: str = "pil"

    def __post_init__(self) -> None:
        if self.mode not in ("crop", "pad"):
            raise ValueError(f"image preprocessing mode must be 'crop' or 'pad', got {self.mode!r}")
        if self.pipeline not in ("pil", "tensor"):
            raise ValueError(f"image preprocessing pipeline must be 'pil' or 'tensor', got {self.pipeline!r}")
        if self.pipeline == "tensor" and self.mode != "pad":
            raise ValueError("image preprocessing pipeline 'tensor' is implemented for mode='pad' only")

    def _pad_size(self, height: int, width: int) -> tuple[int, int]:
        """open_clip ``ResizeMaxSize``'s new ``(h, w)``: ``round(side * (size / max(h, w)))``."""
        return longest_edge_size(height, width, self.size)

    def _pad(self, x: torch.Tensor, new_h: int, new_w: int) -> torch.Tensor:
        pad_h, pad_w = self.size - new_h, self.size - new_w
        return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.pipeline == "tensor":
            return self._tensor_pipeline(images)
        x = as_float01(images) * 255.0
        if self.quantize:
            x = x.round()
        height, width = x.shape[-2:]
        s = self.size
        if self.mode == "crop":
            new_h, new_w = shortest_edge_size(height, width, self.resize_to or s)
            x = resize_bicubic_like_pil(x, (new_h, new_w), self.quantize)
            if new_h < s or new_w < s:
                raise ValueError(f"resized image {new_h}x{new_w} is smaller than the {s}x{s} crop")
            top, left = (new_h - s) // 2, (new_w - s) // 2
            x = x[..., top:top + s, left:left + s]
        else:
            new_h, new_w = self._pad_size(height, width)
            x = self._pad(resize_bicubic_like_pil(x, (new_h, new_w), self.quantize), new_h, new_w)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x / 255.0 - mean) / std

    def _tensor_pipeline(self, images: torch.Tensor) -> torch.Tensor:
        """ToTensor -> ResizeMaxSize (float bicubic, antialiased; zero pad) -> Normalize. A float
        image that already has the resized shape (resized by :meth:`input` ahead) is used as it is,
        bicubic overshoot outside ``[0, 1]`` included, as the original keeps it."""
        x = RewardInput(self.size, "longest_edge_float").apply(images)  # the same resize a rollout does ahead
        x = self._pad(x, *x.shape[-2:])
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def input(self) -> RewardInput | None:
        """The resize this preprocessing does first, as a rollout actor can do it ahead
        (:mod:`mixgrpo_ray.models.reward_input`): the 8-bit shortest-edge resize (``"pil"``
        crop), the float longest-edge resize (``"tensor"`` pad); ``None`` for the 8-bit pad and the
        unquantised crop, which have no exact counterpart there."""
        if self.pipeline == "tensor":
            return RewardInput(self.size, "longest_edge_float")
        if self.mode == "crop" and self.quantize:
            return RewardInput(self.resize_to or self.size, "shortest_edge")
        return None

    @classmethod
    def from_processor_dict(cls, cfg: dict[str, Any] | None, default_size: int) -> "ImagePreprocess":
        """From a CLIP image processor config (``preprocessor_config.json`` contents: shortest-edge
        ``size``, ``crop_size``, ``image_mean``, ``image_std``); CLIP defaults at ``default_size``
        for ``None``. Resampling is always bicubic (what CLIP processors use)."""
        if cfg is None:
            return cls(size=default_size, mode="crop")
        if cfg.get("resample", 3) != 3:
            warnings.warn(f"image processor asks for resample={cfg['resample']}; using bicubic", stacklevel=2)
        size = cfg.get("size", default_size)
        resize_to = _edge(size, "shortest_edge")
        crop_side = _edge(cfg.get("crop_size", size), "height") if cfg.get("do_center_crop", True) else resize_to
        return cls(
            size=crop_side, mode="crop", resize_to=resize_to,
            mean=tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)),
            std=tuple(cfg.get("image_std", OPENAI_CLIP_STD)),
        )


def _edge(spec: Any, key: str) -> int:
    """An int side length from a processor size spec (int, or dict with ``key`` / height / shortest_edge)."""
    if isinstance(spec, int):
        return spec
    for k in (key, "shortest_edge", "height"):
        if k in spec:
            return int(spec[k])
    raise ValueError(f"cannot read an image side length from processor size {spec!r}")
