"""Sigma schedules of rectified-flow sampling (docs/algorithm.md §2, and the Flash post-window grid
of §6): the time shift, the fine grid of ``T + 1`` sigmas, MixGRPO-Flash's coarser tail grid and
the shift recovered from a grid. Sampling runs from sigma = 1 (noise) to sigma = 0 (data); grids
are computed in float64 and returned as float32. Pure torch.
"""

from __future__ import annotations

from typing import Sequence

import torch


def shift_time(u: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """The time shift ``S(u) = s*u / (1 + (s-1)*u)`` of docs/algorithm.md eq. (3) (u = 1 is noise, 0 is data)."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def sigma_schedule(num_steps: int, shift: float) -> torch.Tensor:
    """The ``num_steps + 1`` sigmas ``sigma_i = S(1 - i/T)``, i = 0..T, from 1 to 0 (docs/algorithm.md eq. (4)).

    Returns a float32 tensor; ``sigma_0 = 1`` and ``sigma_T = 0`` exactly.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    u = 1.0 - torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    return shift_time(u, float(shift)).to(torch.float32)


def flash_tail_sigmas(
    num_steps: int, shift: float, last_window_step: int, compression: float
) -> torch.Tensor:
    """The post-window sub-schedule of MixGRPO-Flash (docs/algorithm.md eq. (20)).

    With ``L = last_window_step``, ``u_post = 1 - (L+1)/T`` and
    ``n = int(max((T - L) * compression, 1))``, the grid is ``S(linspace(u_post, 0, n))``: its
    first point is ``sigma_{L+1}`` and ``n - 1`` solver steps follow the window. ``n`` is raised to
    2 when the formula gives 1, so that the tail always reaches sigma = 0.
    """
    if not 0 <= last_window_step < num_steps:
        raise ValueError(f"last_window_step must be in [0, {num_steps - 1}], got {last_window_step}")
    if not 0 < compression <= 1:
        raise ValueError(f"tail compression must be in (0, 1], got {compression}")
    n = int(max((num_steps - last_window_step) * compression, 1))
    n = max(n, 2)
    u_post = 1.0 - (last_window_step + 1) / num_steps
    u = torch.linspace(u_post, 0.0, n, dtype=torch.float64)
    sig = shift_time(u, float(shift)).to(torch.float32)
    sig[-1] = 0.0
    return sig


def recover_shift(sig: Sequence[float]) -> float:
    """Invert ``sigma_1 = S(1 - 1/T)`` for the shift ``s`` of a schedule made by
    :func:`sigma_schedule`: ``s = sigma (1-u) / (u (1-sigma))`` (docs/algorithm.md eq. (5))."""
    t = len(sig) - 1
    u = 1.0 - 1.0 / t
    s1 = sig[1]
    if t < 2 or not 0.0 < s1 < 1.0:
        return 1.0
    return s1 * (1.0 - u) / (u * (1.0 - s1))
