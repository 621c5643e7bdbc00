"""MixGRPO's mixed ODE-SDE rollout (docs/algorithm.md §6): Euler before the window, recorded SDE
steps inside it, then Euler on the fine grid (MixGRPO) or DPM-Solver++ 2M on the Flash grid
(MixGRPO-Flash); and its number of model evaluations. Pure torch, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from mixgrpo_ray.core.dpm_solver import DPMHistory, ode_solve
from mixgrpo_ray.core.schedule import flash_tail_sigmas, recover_shift
from mixgrpo_ray.core.steps import SDE_KINDS, VelocityFn, euler_step, sde_step, sigma_batch

TAILS = ("euler", "dpm2")


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


def check_window(window: Sequence[int], num_steps: int) -> list[int]:
    """``window`` as a list of consecutive step indices inside ``0..num_steps - 1``."""
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
    ``L + n`` for the DPM-Solver++ tail (docs/algorithm.md eq. (21))."""
    steps = check_window(window, num_steps)
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
    """MixGRPO's mixed ODE-SDE sampling (docs/algorithm.md eq. (19)).

    Steps before the window: Euler ODE on the fine grid ``sigmas`` (T + 1 values). Steps in the
    (consecutive) ``window``: SDE steps (:func:`~mixgrpo_ray.core.steps.sde_step`), each recorded
    as a :class:`WindowRecord`. After the window: ``tail="euler"`` continues with Euler on the fine
    grid (MixGRPO); ``tail="dpm2"`` switches to DPM-Solver++ 2M on the coarser sub-schedule of
    :func:`~mixgrpo_ray.core.schedule.flash_tail_sigmas` with compression ``tail_compression``
    (MixGRPO-Flash), its history fed with ``x0_hat`` at every step so the first post-window step
    is already 2nd order. ``shift`` (for the sub-schedule) is recovered from ``sigmas`` when not
    given. If the window contains the last step (DanceGRPO: SDE everywhere), the final latent is
    that step's ``x0_hat``.

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
    steps = check_window(window, num_steps)
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
        v = velocity_fn(x, sigma_batch(sig[i], x)).float()
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
            shift = recover_shift(sig)
        tail_sigmas = flash_tail_sigmas(num_steps, shift, last, tail_compression)
        tail_sigmas[0] = sig[last + 1]  # exactly where the window left the latent
        x = ode_solve(velocity_fn, x, tail_sigmas, order=2, history=hist)
    nfe += len(tail_sigmas) - 1
    return RolloutResult(x=x, records=records, nfe=nfe)
