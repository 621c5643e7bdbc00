"""Former home of the sampling math, now in :mod:`~mixgrpo_ray.core.schedule`,
:mod:`~mixgrpo_ray.core.steps`, :mod:`~mixgrpo_ray.core.dpm_solver` and
:mod:`~mixgrpo_ray.core.mixed_rollout`."""

# temporary re-export until importers move
from mixgrpo_ray.core.dpm_solver import DPMHistory, dpm_solver_step, ode_solve  # noqa: F401
from mixgrpo_ray.core.mixed_rollout import TAILS, RolloutResult, WindowRecord, mixed_rollout, rollout_nfe  # noqa: F401
from mixgrpo_ray.core.schedule import flash_tail_sigmas, shift_time, sigma_schedule  # noqa: F401
from mixgrpo_ray.core.steps import (  # noqa: F401
    SDE_KINDS,
    SDEStep,
    VelocityFn,
    euler_step,
    sde_log_prob,
    sde_mean_std,
    sde_noise_scale,
    sde_step,
)
