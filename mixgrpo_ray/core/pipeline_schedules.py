"""The sigma schedules diffusers' pipelines sample with (docs/algorithm.md §2.1), restated from
the scheduler config a pipeline folder ships (``scheduler/scheduler_config.json`` of a
``FlowMatchEulerDiscreteScheduler``). Pure math, float64 inside, float32 out; sigma runs from
about 1 (noise) to 0 (data) and every schedule ends with sigma = 0.

* ``sd3`` (StableDiffusion3Pipeline, SD3.5): the scheduler's own grid, ``u_i = linspace(1, S(1/1000), N)``
  (the training grid's largest and smallest sigmas, already shifted), then the static shift
  ``S(u) = s u / (1 + (s - 1) u)`` applied again; with ``use_dynamic_shifting`` the pipeline's
  resolution-dependent shift replaces the static one.
* ``flux`` / ``qwen_image`` (FluxPipeline, QwenImagePipeline): ``u_i = linspace(1, 1/N, N)`` and the
  dynamic shift ``e^mu / (e^mu + (1/u - 1))`` (``time_shift_type: exponential``; ``linear``:
  ``mu / (mu + (1/u - 1))``) with ``mu`` linear in the image's packed token count between
  ``(base_image_seq_len, base_shift)`` and ``(max_image_seq_len, max_shift)``; a static shift when
  the config has no dynamic shifting.
* ``shift_terminal`` (Qwen-Image's config sets it): the schedule is stretched so that its last
  non-zero sigma is ``shift_terminal``: ``1 - (1 - sigma) (1 - terminal) / (1 - sigma_last)``.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import torch

#: pipelines whose schedule is restated here, and the defaults their ``calculate_shift`` call uses
PIPELINES = {"sd3": {"max_shift": 1.16}, "flux": {"max_shift": 1.15}, "qwen_image": {"max_shift": 1.15}}
UNSUPPORTED = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas")


def calculate_mu(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
                 max_shift: float = 1.15) -> float:
    """The dynamic shift's ``mu``: linear in ``image_seq_len`` through ``(base_seq_len, base_shift)``
    and ``(max_seq_len, max_shift)``."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + base_shift - slope * base_seq_len


def dynamic_shift(u: torch.Tensor, mu: float, kind: str = "exponential") -> torch.Tensor:
    """``e^mu / (e^mu + (1/u - 1))`` (exponential) or ``mu / (mu + (1/u - 1))`` (linear)."""
    a = math.exp(mu) if kind == "exponential" else mu
    return a / (a + (1.0 / u - 1.0))


def static_shift(u: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * u / (1.0 + (shift - 1.0) * u)


def pipeline_sigmas(pipeline: str, config: Mapping, num_steps: int, image_seq_len: int) -> torch.Tensor:
    """The ``num_steps + 1`` sigmas (the last 0) that ``pipeline`` (``sd3``, ``flux``,
    ``qwen_image``) samples ``num_steps`` steps with, for a scheduler ``config`` and an image of
    ``image_seq_len`` packed latent tokens (see the module docstring)."""
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; one of {', '.join(PIPELINES)}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    used = [k for k in UNSUPPORTED if config.get(k)]
    if used:
        raise ValueError(f"scheduler option(s) {', '.join(used)} are not supported; use a flow-matching Euler "
                         "scheduler without them")
    n = int(num_steps)
    shift = float(config.get("shift", 1.0))
    train = int(config.get("num_train_timesteps", 1000))
    dynamic = bool(config.get("use_dynamic_shifting", False))
    if pipeline == "sd3":
        smallest = 1.0 / train if dynamic else float(static_shift(torch.tensor(1.0 / train, dtype=torch.float64), shift))
        u = torch.linspace(1.0, smallest, n, dtype=torch.float64)
    else:
        u = torch.linspace(1.0, 1.0 / n, n, dtype=torch.float64)
    if dynamic:
        mu = calculate_mu(image_seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                          config.get("base_shift", 0.5), config.get("max_shift", PIPELINES[pipeline]["max_shift"]))
        sig = dynamic_shift(u, mu, config.get("time_shift_type", "exponential"))
    else:
        sig = static_shift(u, shift)
    terminal: Optional[float] = config.get("shift_terminal")
    if terminal:
        if n < 2:  # one step starts at sigma 1: there is nothing to stretch (diffusers divides 0 by 0)
            raise ValueError(f"the scheduler's shift_terminal needs at least 2 steps, got {n}")
        sig = 1.0 - (1.0 - sig) * (1.0 - terminal) / (1.0 - sig[-1])
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)]).to(torch.float32)
