"""Names of floating-point precisions, as config files and options spell them."""

from __future__ import annotations

from typing import Optional

import torch

_BY_NAME = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}
#: the short names used in configs
SHORT_NAMES = ("fp32", "bf16", "fp16")


def parse_dtype(name: "str | torch.dtype | None", auto: Optional[torch.dtype] = None) -> torch.dtype:
    """``fp32``/``bf16``/``fp16`` (or their long spellings, or a torch.dtype) as a torch dtype;
    ``auto``/``None`` gives ``auto`` (a ValueError when no automatic choice was given)."""
    if isinstance(name, torch.dtype):
        return name
    if name is None or str(name).lower() == "auto":
        if auto is None:
            raise ValueError("dtype 'auto' needs a default here; use fp32, bf16 or fp16")
        return auto
    try:
        return _BY_NAME[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of fp32, bf16, fp16 or auto") from None


def short_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``bf16``."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
