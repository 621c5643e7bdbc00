"""DPM-Solver++ for flow matching (docs/algorithm.md §5, MixGRPO-Flash): the 1st-order and the
2nd-order multistep midpoint update, and an ODE solve along a sigma grid. Coefficients are
computed in float64 from Python floats; tensors are float32. Pure torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from mixgrpo_ray.core.steps import VelocityFn, euler_step, sigma_batch


def lambda_(sigma: float) -> float:
    """``lambda = log(alpha / sigma)`` with ``alpha = 1 - sigma`` (-inf at sigma = 1, +inf at 0;
    docs/algorithm.md eq. (14))."""
    alpha = 1.0 - sigma
    if alpha <= 0.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log(alpha) - math.log(sigma)


@dataclass
class DPMHistory:
    """The previous step's data prediction and sigma, fed to the 2nd-order multistep update."""

    x0_hat: Optional[torch.Tensor] = None
    sigma: Optional[float] = None

    def push(self, x0_hat: torch.Tensor, sigma: float) -> None:
        self.x0_hat = x0_hat
        self.sigma = float(sigma)


def dpm_solver_step(
    x: torch.Tensor,
    x0_hat: torch.Tensor,
    sigma: float,
    sigma_next: float,
    prev_x0_hat: Optional[torch.Tensor] = None,
    prev_sigma: Optional[float] = None,
) -> torch.Tensor:
    """One DPM-Solver++ step for flow matching (docs/algorithm.md eqs. (14)–(17)).

    1st order (no history, or ``sigma_next == 0``): ``x' = (sigma'/sigma) x + alpha' (1 - e^{-h}) x0_hat``.
    2nd order multistep midpoint: ``D = x0_hat + (x0_hat - x0_prev) / (2r)``, ``r = h_prev / h``,
    ``x' = (sigma'/sigma) x + alpha' (1 - e^{-h}) D``. ``e^{-h}`` is evaluated as
    ``(alpha sigma') / (sigma alpha')`` so sigma = 1 (lambda = -inf) needs no special case.
    """
    sigma, sigma_next = float(sigma), float(sigma_next)
    alpha, alpha_next = 1.0 - sigma, 1.0 - sigma_next
    exp_neg_h = (alpha * sigma_next) / (sigma * alpha_next)
    coef_x = sigma_next / sigma
    coef_d = alpha_next * (1.0 - exp_neg_h)
    x = x.float()
    x0_hat = x0_hat.float()
    if prev_x0_hat is None or prev_sigma is None or sigma_next <= 0.0:
        return coef_x * x + coef_d * x0_hat
    h = lambda_(sigma_next) - lambda_(sigma)
    h_prev = lambda_(sigma) - lambda_(prev_sigma)
    half_inv_r = h / (2.0 * h_prev)  # 1/(2r); 0 when the previous sigma was 1 (h_prev = inf)
    d = x0_hat + half_inv_r * (x0_hat - prev_x0_hat.float())
    return coef_x * x + coef_d * d


def ode_solve(
    velocity_fn: VelocityFn,
    x: torch.Tensor,
    sigmas: torch.Tensor | Sequence[float],
    order: int = 1,
    *,
    history: Optional[DPMHistory] = None,
) -> torch.Tensor:
    """Integrate the flow ODE along ``sigmas`` with DPM-Solver++ for flow matching
    (docs/algorithm.md §5, eqs. (15)–(17)).

    ``order=1`` is Euler (algebraically equal to 1st-order DPM-Solver++); ``order=2`` the
    multistep midpoint solver (2nd order from the second step on, or from the first if
    ``history`` holds a previous data prediction); a step to sigma = 0 is 1st order and returns
    ``x0_hat`` exactly. ``history`` (optional) is read and updated in place.
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    sig = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
    hist = history if history is not None else DPMHistory()
    x = x.float()
    for sigma, sigma_next in zip(sig[:-1], sig[1:]):
        v = velocity_fn(x, sigma_batch(sigma, x)).float()
        x0_hat = x - sigma * v
        if order == 1:
            x = euler_step(x, v, sigma, sigma_next)
        else:
            x = dpm_solver_step(x, x0_hat, sigma, sigma_next, hist.x0_hat, hist.sigma)
        hist.push(x0_hat, sigma)
    return x
