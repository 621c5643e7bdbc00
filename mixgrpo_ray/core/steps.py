"""Single sampling steps of rectified flow (docs/algorithm.md §3–§4): the ODE Euler step, the SDE
step of Flow-GRPO / DanceGRPO and its Gaussian log-probability. Pure torch, no Ray.

Notation (docs/algorithm.md §1, eq. (2)): ``sigma`` is the current noise level, ``sigma_next``
the next one, ``d = sigma_next - sigma`` (negative), ``v`` the predicted velocity and
``x0_hat = x - sigma * v`` the data prediction. All step math is float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``velocity_fn(x, sigma) -> v`` with ``sigma`` a float32 tensor of shape ``(batch,)``."""

SDE_KINDS = ("flow_grpo", "dance_grpo")

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def per_sample(s: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """A float stays a float; a tensor of shape ``(batch,)`` (or scalar) is shaped to broadcast
    over the non-batch dims of ``like`` (float32)."""
    if isinstance(s, torch.Tensor):
        s = s.to(device=like.device, dtype=torch.float32)
        if s.ndim == 0:
            return s
        if s.ndim == 1 and s.shape[0] == like.shape[0]:
            return s.reshape(-1, *([1] * (like.ndim - 1)))
        return s
    return float(s)


def sigma_batch(sigma: float, x: torch.Tensor) -> torch.Tensor:
    """``sigma`` as the float32 ``(batch,)`` tensor a :data:`VelocityFn` takes for latents ``x``."""
    return torch.full((x.shape[0],), float(sigma), dtype=torch.float32, device=x.device)


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """ODE Euler step ``x' = x + (sigma_next - sigma) * v`` (docs/algorithm.md eq. (7)), in float32."""
    x = x.float()
    return x + (per_sample(sigma_next, x) - per_sample(sigma, x)) * v.float()


def sde_noise_scale(sigma, sigma_next, noise_level: float, kind: str = "flow_grpo"):
    """The SDE noise scale ``g`` of docs/algorithm.md eqs. (8), (13).

    ``flow_grpo``: ``g = a * sqrt(sigma / (1 - sigma))``, and at sigma = 1 (where that is infinite)
    ``g = a * sqrt(sigma / (1 - sigma_next))``. ``dance_grpo``: the constant ``g = eta``.
    Works elementwise on floats or tensors.
    """
    if kind == "dance_grpo":
        if isinstance(sigma, torch.Tensor):
            return torch.full_like(sigma, float(noise_level), dtype=torch.float32)
        return float(noise_level)
    if kind != "flow_grpo":
        raise ValueError(f"unknown SDE kind {kind!r}; choose one of {SDE_KINDS}")
    if isinstance(sigma, torch.Tensor) or isinstance(sigma_next, torch.Tensor):
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        sigma_next = torch.as_tensor(sigma_next, dtype=torch.float32, device=sigma.device)
        denom = torch.where(sigma >= 1.0, 1.0 - sigma_next, 1.0 - sigma)
        return noise_level * torch.sqrt(sigma / denom)
    denom = (1.0 - sigma_next) if sigma >= 1.0 else (1.0 - sigma)
    return noise_level * math.sqrt(sigma / denom)


def sde_mean_std(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, noise_level: float,
                 kind: str = "flow_grpo") -> tuple[torch.Tensor, torch.Tensor | float]:
    """Mean and std of the SDE transition ``x -> x'`` (docs/algorithm.md eqs. (9)–(10)), float32.

    ``mu = x + d * (v + g^2 / (2 sigma) * (x + (1 - sigma) v))``, ``std = g * sqrt(-d)`` with
    ``d = sigma_next - sigma`` and ``g`` from :func:`sde_noise_scale`.
    """
    x = x.float()
    v = v.float()
    g = sde_noise_scale(sigma, sigma_next, noise_level, kind)
    s = per_sample(sigma, x)
    sn = per_sample(sigma_next, x)
    g_b = per_sample(g, x)
    d = sn - s
    mean = x + d * (v + g_b**2 / (2.0 * s) * (x + (1.0 - s) * v))
    if isinstance(d, torch.Tensor):
        std = g_b * torch.sqrt(-d)
    else:
        std = g_b * math.sqrt(-d)
    return mean, std


def sde_log_prob(x_next: torch.Tensor, mean: torch.Tensor, std) -> torch.Tensor:
    """Gaussian log density of ``x_next`` under ``N(mean, std^2 I)``, per element, **averaged**
    over all non-batch dims (docs/algorithm.md eq. (11)). float32, ``x_next`` detached; returns
    shape ``(batch,)``.
    """
    x_next = x_next.detach().float()
    mean = mean.float()
    std_t = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    logp = -((x_next - mean) ** 2) / (2.0 * std_t**2) - torch.log(std_t) - _LOG_SQRT_2PI
    return logp.reshape(logp.shape[0], -1).mean(dim=1)


@dataclass
class SDEStep:
    """Result of one SDE step: the sample, its log-prob ``(batch,)``, and the Gaussian's params."""

    x_next: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor | float


def sde_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, noise_level: float, *, kind: str = "flow_grpo",
             noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None) -> SDEStep:
    """One stochastic step ``x' = mu + std * eps`` (docs/algorithm.md eqs. (8)–(11)) and its
    log-probability: :func:`sde_mean_std`, a sample, :func:`sde_log_prob`.

    ``kind="flow_grpo"``: MixGRPO's step, ``g = a*sqrt(sigma/(1-sigma))`` (``a = noise_level``).
    ``kind="dance_grpo"``: the DanceGRPO baseline, constant ``g = eta`` (``eta = noise_level``).
    ``noise`` (``eps``) is drawn from ``generator`` on the CPU when not given.
    ``sigma`` / ``sigma_next`` are floats or tensors broadcastable over the batch.
    """
    mean, std = sde_mean_std(x, v, sigma, sigma_next, noise_level, kind)
    if noise is None:
        noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device)
    x_next = mean + std * noise.to(mean.device, torch.float32)
    log_prob = sde_log_prob(x_next, mean, std)
    return SDEStep(x_next=x_next, log_prob=log_prob, mean=mean, std=std)
