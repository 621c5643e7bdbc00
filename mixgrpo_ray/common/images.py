"""Image conversions (uint8 <-> float in [0, 1]) and captioned PNG image grids (PIL) for looking at samples: prompts under images, a title on top,
optional labels in front of each row (e.g. ``base`` / ``trained`` for before/after grids)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont


def as_float01(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` float32 in ``[0, 1]`` from uint8 or float images."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32) / 255.0
    return images.to(torch.float32).clamp(0.0, 1.0)


def as_uint8(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` uint8 from uint8 or float-in-``[0, 1]`` images (rounded)."""
    if images.dtype == torch.uint8:
        return images
    return (images.to(torch.float32).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


def to_uint8_hwc(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` uint8 or float-in-``[0, 1]`` images -> ``(B, H, W, 3)`` uint8."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (batch, 3, H, W), got {tuple(images.shape)}")
    return as_uint8(images.detach()).cpu().permute(0, 2, 3, 1).contiguous()


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def wrap_text(text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a single long word
    stays whole)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and font.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def image_grid(
    images: torch.Tensor,
    captions: Sequence[str] | None = None,
    title: str = "",
    columns: int | None = None,
    row_labels: Sequence[str] | None = None,
    scale: int = 4,
    font_size: int = 11,
) -> Image.Image:
    """A PIL image of ``images`` ``(B, 3, H, W)`` in a grid, each enlarged ``scale`` times
    (nearest neighbour, so pixels stay visible), with ``captions[i]`` wrapped under image ``i``,
    ``title`` on top and ``row_labels[r]`` left of row ``r``.

    ``columns`` defaults to ``ceil(sqrt(B))``. Captions may be empty strings; all caption rows
    get the height of the longest caption.
    """
    pix = to_uint8_hwc(images)
    n, height, width = pix.shape[0], pix.shape[1], pix.shape[2]
    if n == 0:
        raise ValueError("image_grid: no images")
    if captions is not None and len(captions) != n:
        raise ValueError(f"image_grid: {n} images but {len(captions)} captions")
    if scale < 1:
        raise ValueError(f"image_grid: scale must be >= 1, got {scale}")
    cols = columns or max(1, int(round(n**0.5 + 0.4999)))
    rows = (n + cols - 1) // cols
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"image_grid: {rows} rows but {len(row_labels)} row labels")
    font = _font(font_size)
    line_h = font_size + 3
    pad = 6
    cell_w, cell_h = width * scale, height * scale
    wrapped = [wrap_text(c, font, cell_w) if c else [] for c in (captions or [""] * n)]
    caption_h = max(len(w) for w in wrapped) * line_h
    label_w = 0
    if row_labels:
        label_w = int(max(font.getlength(label) for label in row_labels)) + pad
    title_lines = wrap_text(title, font, cols * (cell_w + pad) + label_w) if title else []
    title_h = len(title_lines) * line_h + (pad if title_lines else 0)

    total_w = pad + label_w + cols * (cell_w + pad)
    total_h = pad + title_h + rows * (cell_h + caption_h + pad + 2)
    canvas = Image.new("RGB", (total_w, total_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(title_lines):
        draw.text((pad, pad + i * line_h), line, fill=TEXT, font=font)
    for i in range(n):
        r, c = divmod(i, cols)
        x = pad + label_w + c * (cell_w + pad)
        y = pad + title_h + r * (cell_h + caption_h + pad + 2)
        tile = Image.fromarray(pix[i].numpy(), "RGB").resize((cell_w, cell_h), Image.NEAREST)
        canvas.paste(tile, (x, y))
        for k, line in enumerate(wrapped[i]):
            draw.text((x, y + cell_h + 2 + k * line_h), line, fill=TEXT, font=font)
    for r, label in enumerate(row_labels or []):
        y = pad + title_h + r * (cell_h + caption_h + pad + 2) + cell_h // 2 - line_h // 2
        draw.text((pad, y), label, fill=TEXT, font=font)
    return canvas


def save_grid(path: str | Path, images: torch.Tensor, **kwargs) -> Path:
    """:func:`image_grid` of ``images`` written to ``path`` as PNG (parent folders created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, **kwargs).save(out, format="PNG")
    return out


#: grid cells are at most this many pixels wide (larger images are shrunk, smaller enlarged)
GRID_CELL = 256


def grid_png(images: torch.Tensor, captions: Sequence[str], title: str = "", columns: Optional[int] = None,
             row_labels: Optional[Sequence[str]] = None) -> bytes:
    """PNG bytes of a captioned grid of ``columns`` images per row; images wider than
    :data:`GRID_CELL` are shrunk to it (antialiased), small ones enlarged by whole factors."""
    import torch.nn.functional as F

    height, width = images.shape[-2:]
    scale = max(1, GRID_CELL // width)
    if width > GRID_CELL:
        size = (max(1, round(height * GRID_CELL / width)), GRID_CELL)
        images = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True).round().clamp(0, 255).to(torch.uint8)
    buf = io.BytesIO()
    grid = image_grid(images, captions=list(captions), title=title, columns=columns, row_labels=row_labels, scale=scale)
    grid.save(buf, format="PNG")
    return buf.getvalue()
