"""Mean and standard error, the one summary every report of this project prints."""

from __future__ import annotations

import math
from typing import Optional

import torch


def mean_se(values: torch.Tensor) -> tuple[float, Optional[float]]:
    """Mean and standard error of the mean (unbiased std / sqrt(n)) over the finite entries of
    ``values``. With no finite entry the mean is NaN; with fewer than two the error is ``None``."""
    flat = torch.as_tensor(values).detach().reshape(-1).double()
    ok = flat[torch.isfinite(flat)]
    n = int(ok.numel())
    if n == 0:
        return float("nan"), None
    mean = float(ok.mean())
    return mean, (float(ok.std(unbiased=True)) / math.sqrt(n) if n > 1 else None)


def summarize(values: torch.Tensor) -> dict:
    """``{"mean", "se", "n", "failed"}`` of ``values`` (NaN entries are failures, left out)."""
    flat = torch.as_tensor(values).reshape(-1)
    mean, se = mean_se(flat)
    n = int(torch.isfinite(flat.double()).sum())
    return {"mean": mean, "se": se, "n": n, "failed": int(flat.numel()) - n}
