"""Sampling math for rectified-flow models: sigma schedule, ODE/SDE steps, DPM-Solver++ and the
mixed ODE-SDE rollout of MixGRPO (SPEC §2–§4). Pure torch, no Ray.

Notation (SPEC §3): ``sigma`` is the current noise level, ``sigma_next`` the next one,
``d = sigma_next - sigma`` (negative), ``v`` the predicted velocity and
``x0_hat = x - sigma * v`` the data prediction. Sampling runs from sigma = 1 (noise) to
sigma = 0 (data). All step math is float32; coefficients of the deterministic solvers are
computed in float64 from Python floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``velocity_fn(x, sigma) -> v`` with ``sigma`` a float32 tensor of shape ``(batch,)``."""

SDE_KINDS = ("flow_grpo", "dance_grpo")
TAILS = ("euler", "dpm2")

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------
def shift_time(u: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """The time shift ``S(u) = s*u / (1 + (s-1)*u)`` of SPEC §2 (u = 1 is noise, 0 is data)."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def sigma_schedule(num_steps: int, shift: float) -> torch.Tensor:
    """The ``num_steps + 1`` sigmas ``sigma_i = S(1 - i/T)``, i = 0..T, from 1 to 0 (SPEC §2).

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
    """The post-window sub-schedule of MixGRPO-Flash (SPEC §4).

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


# --------------------------------------------------------------------------------------------
# Single steps
# --------------------------------------------------------------------------------------------
def _per_sample(s: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
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


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """ODE Euler step ``x' = x + (sigma_next - sigma) * v`` (SPEC §3), in float32."""
    x = x.float()
    return x + (_per_sample(sigma_next, x) - _per_sample(sigma, x)) * v.float()


def sde_noise_scale(sigma, sigma_next, noise_level: float, kind: str = "flow_grpo"):
    """The SDE noise scale ``g`` of SPEC §3.

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


def sde_mean_std(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma,
    sigma_next,
    noise_level: float,
    kind: str = "flow_grpo",
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """Mean and std of the SDE transition ``x -> x'`` (SPEC §3), float32.

    ``mu = x + d * (v + g^2 / (2 sigma) * (x + (1 - sigma) v))``, ``std = g * sqrt(-d)`` with
    ``d = sigma_next - sigma`` and ``g`` from :func:`sde_noise_scale`.
    """
    x = x.float()
    v = v.float()
    g = sde_noise_scale(sigma, sigma_next, noise_level, kind)
    s = _per_sample(sigma, x)
    sn = _per_sample(sigma_next, x)
    g_b = _per_sample(g, x)
    d = sn - s
    mean = x + d * (v + g_b**2 / (2.0 * s) * (x + (1.0 - s) * v))
    if isinstance(d, torch.Tensor):
        std = g_b * torch.sqrt(-d)
    else:
        std = g_b * math.sqrt(-d)
    return mean, std


def sde_log_prob(x_next: torch.Tensor, mean: torch.Tensor, std) -> torch.Tensor:
    """Gaussian log density of ``x_next`` under ``N(mean, std^2 I)``, per element, **averaged**
    over all non-batch dims (SPEC §3). float32, ``x_next`` detached; returns shape ``(batch,)``.
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


def sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma,
    sigma_next,
    noise_level: float,
    *,
    kind: str = "flow_grpo",
    noise: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> SDEStep:
    """One stochastic step ``x' = mu + std * eps`` (SPEC §3) and its log-probability.

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


# --------------------------------------------------------------------------------------------
# DPM-Solver++ for flow matching (SPEC §3, MixGRPO-Flash)
# --------------------------------------------------------------------------------------------
def _lambda(sigma: float) -> float:
    """``lambda = log(alpha / sigma)`` with ``alpha = 1 - sigma`` (-inf at sigma = 1, +inf at 0)."""
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
    """One DPM-Solver++ step for flow matching (SPEC §3).

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
    h = _lambda(sigma_next) - _lambda(sigma)
    h_prev = _lambda(sigma) - _lambda(prev_sigma)
    half_inv_r = h / (2.0 * h_prev)  # 1/(2r); 0 when the previous sigma was 1 (h_prev = inf)
    d = x0_hat + half_inv_r * (x0_hat - prev_x0_hat.float())
    return coef_x * x + coef_d * d


def _sigma_batch(sigma: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(sigma), dtype=torch.float32, device=x.device)


def ode_solve(
    velocity_fn: VelocityFn,
    x: torch.Tensor,
    sigmas: torch.Tensor | Sequence[float],
    order: int = 1,
    *,
    history: Optional[DPMHistory] = None,
) -> torch.Tensor:
    """Integrate the flow ODE along ``sigmas`` with DPM-Solver++ for flow matching (SPEC §3).

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
        v = velocity_fn(x, _sigma_batch(sigma, x)).float()
        x0_hat = x - sigma * v
        if order == 1:
            x = euler_step(x, v, sigma, sigma_next)
        else:
            x = dpm_solver_step(x, x0_hat, sigma, sigma_next, hist.x0_hat, hist.sigma)
        hist.push(x0_hat, sigma)
    return x


# --------------------------------------------------------------------------------------------
# Mixed ODE-SDE rollout (SPEC §4)
# --------------------------------------------------------------------------------------------
@dataclass
class WindowRecord:
    """One recorded SDE transition: the action of one MDP step."""

    step: int
    x: torch.Tensor  # input latent x_i, float32
    sigma: float
    sigma_next: float
    x_next: torch.Tensor  # sampled output latent x_{i+1}, float32
    log_prob: torch.Tensor  # (batch,) log-prob under the sampling (old) policy


@dataclass
class RolloutResult:
    """Final latent, the window records (in step order) and the number of model evaluations."""

    x: torch.Tensor
    records: list[WindowRecord] = field(default_factory=list)
    nfe: int = 0


def _check_window(window: Sequence[int], num_steps: int) -> list[int]:
    steps = [int(i) for i in window]
    if not steps:
        raise ValueError("the SDE window is empty")
    if steps != list(range(steps[0], steps[0] + len(steps))):
        raise ValueError(f"the SDE window must be consecutive step indices, got {steps}")
    if steps[0] < 0 or steps[-1] > num_steps - 1:
        raise ValueError(f"the SDE window {steps} is outside steps 0..{num_steps - 1}")
    return steps


def rollout_nfe(num_steps: int, window: Sequence[int], tail: str = "euler", tail_compression: float | None = None) -> int:
    """Model evaluations of :func:`mixed_rollout` without running it: ``T`` for the Euler tail,
    ``L + n`` for the DPM-Solver++ tail (SPEC §4)."""
    steps = _check_window(window, num_steps)
    last = steps[-1]
    if tail == "euler" or last == num_steps - 1:
        return num_steps
    return last + 1 + (len(flash_tail_sigmas(num_steps, 1.0, last, tail_compression)) - 1)


def mixed_rollout(
    velocity_fn: VelocityFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    window: Sequence[int],
    *,
    noise_level: float,
    sde_kind: str = "flow_grpo",
    tail: str = "euler",
    tail_compression: float | None = None,
    shift: float | None = None,
    generator: Optional[torch.Generator] = None,
    start_step: int = 0,
) -> RolloutResult:
    """MixGRPO's mixed ODE-SDE sampling (SPEC §4).

    Steps before the window: Euler ODE on the fine grid ``sigmas`` (T + 1 values). Steps in the
    (consecutive) ``window``: SDE steps (:func:`sde_step`), each recorded as a
    :class:`WindowRecord`. After the window: ``tail="euler"`` continues with Euler on the fine
    grid (MixGRPO); ``tail="dpm2"`` switches to DPM-Solver++ 2M on the coarser sub-schedule of
    :func:`flash_tail_sigmas` with compression ``tail_compression`` (MixGRPO-Flash), its history
    fed with ``x0_hat`` at every step so the first post-window step is already 2nd order.
    ``shift`` (for the sub-schedule) is recovered from ``sigmas`` when not given.
    If the window contains the last step (DanceGRPO: SDE everywhere), the final latent is that
    step's ``x0_hat``.

    ``start_step`` (at most the window's first step) says ``x`` is already the latent at
    ``sigmas[start_step]``: the ODE steps before it were taken elsewhere (e.g. once per group
    when a group shares its initial noise). They still count in ``nfe``, which is per sample.
    """
    if tail not in TAILS:
        raise ValueError(f"unknown tail {tail!r}; choose one of {TAILS}")
    if sde_kind not in SDE_KINDS:
        raise ValueError(f"unknown SDE kind {sde_kind!r}; choose one of {SDE_KINDS}")
    sig = [float(s) for s in sigmas.tolist()]
    num_steps = len(sig) - 1
    steps = _check_window(window, num_steps)
    first, last = steps[0], steps[-1]
    if tail == "dpm2" and tail_compression is None:
        raise ValueError("tail='dpm2' needs tail_compression (e.g. 0.4 for Flash, 0.2 for Flash*)")

    if not 0 <= start_step <= first:
        raise ValueError(f"start_step must be in [0, {first}] (the window's first step), got {start_step}")
    hist = DPMHistory()
    records: list[WindowRecord] = []
    nfe = start_step
    x = x.float()

    for i in range(start_step, last + 1):
        v = velocity_fn(x, _sigma_batch(sig[i], x)).float()
        nfe += 1
        x0_hat = x - sig[i] * v
        hist.push(x0_hat, sig[i])
        if i < first:
            x = euler_step(x, v, sig[i], sig[i + 1])
            continue
        out = sde_step(x, v, sig[i], sig[i + 1], noise_level, kind=sde_kind, generator=generator)
        records.append(WindowRecord(i, x, sig[i], sig[i + 1], out.x_next, out.log_prob))
        x = x0_hat if i == num_steps - 1 else out.x_next

    if last == num_steps - 1:
        return RolloutResult(x=x, records=records, nfe=nfe)

    if tail == "euler":
        tail_sigmas = torch.tensor(sig[last + 1 :], dtype=torch.float32)
        x = ode_solve(velocity_fn, x, tail_sigmas, order=1)
    else:
        if shift is None:
            shift = _recover_shift(sig)
        tail_sigmas = flash_tail_sigmas(num_steps, shift, last, tail_compression)
        tail_sigmas[0] = sig[last + 1]  # exactly where the window left the latent
        x = ode_solve(velocity_fn, x, tail_sigmas, order=2, history=hist)
    nfe += len(tail_sigmas) - 1
    return RolloutResult(x=x, records=records, nfe=nfe)


def _recover_shift(sig: Sequence[float]) -> float:
    """Invert ``sigma_1 = S(1 - 1/T)`` for the shift ``s`` of a schedule made by
    :func:`sigma_schedule`: ``s = sigma (1-u) / (u (1-sigma))``."""
    t = len(sig) - 1
    u = 1.0 - 1.0 / t
    s1 = sig[1]
    if t < 2 or not 0.0 < s1 < 1.0:
        return 1.0
    return s1 * (1.0 - u) / (u * (1.0 - s1))
