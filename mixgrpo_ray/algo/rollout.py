"""Sampling groups of images with the old policy and recording what the learner needs (no Ray).

:func:`sample_groups` is what a rollout actor runs: for each prompt, ``group_size`` images
(sharing one initial noise by default, docs/algorithm.md eq. (23)) by MixGRPO's mixed ODE-SDE rollout, or by
DanceGRPO's SDE-everywhere rollout with a random subset of steps kept for training.
:func:`sample_images` is plain deterministic ODE sampling for evaluation and image grids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from mixgrpo_ray.common.images import as_uint8
from mixgrpo_ray.config import GRPOConfig, SamplingConfig
from mixgrpo_ray.models.guidance import encode_guided, guided_velocity, passes
from mixgrpo_ray.models.policy import Policy, cond_repeat
from mixgrpo_ray.models.reward_input import RewardInput
from mixgrpo_ray.core.dpm_solver import ode_solve
from mixgrpo_ray.core.mixed_rollout import mixed_rollout
from mixgrpo_ray.core.trajectory import Trajectory


@dataclass
class RolloutMeta:
    """What a rollout call reports about itself (the driver reads only this, never the tensors)."""

    worker: int
    version: int  # weight version the images were sampled with
    nfe: int  # model evaluations per image
    num_images: int
    num_trained_steps: int  # recorded SDE steps per image (the policy's NFE when training)
    time_s: float
    pid: int = 0  # process of the actor that sampled (a new one after a restart)
    memory_gb: float = 0.0  # the actor's peak memory so far (mixgrpo_ray.common.process_memory); 0: not measured
    passes: int = 1  # model passes per velocity evaluation (2 with classifier-free guidance)


@dataclass
class RolloutOutput:
    images: torch.Tensor  # (B, 3, H, W) uint8
    trajectory: Trajectory
    nfe: int  # model evaluations per sample (both passes of each guided evaluation)
    passes: int = 1  # model passes per velocity evaluation: 2 with classifier-free guidance


def _velocity_fn(policy: Policy, cond):
    def fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return guided_velocity(policy, x.to(policy.device), sigma.to(policy.device), cond).float()

    return fn


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Decoded float images in ``[0, 1]`` as CPU uint8 (what travels to the reward servers)."""
    return as_uint8(images.detach()).cpu()


def images_for(images: torch.Tensor, inputs: Sequence[Optional[RewardInput]]) -> tuple[torch.Tensor, ...]:
    """``images`` once per entry of ``inputs``: as sampled for ``None``, else resized as that
    reward input needs them (:meth:`RewardInput.apply`; what the reward model would do first, so
    its scores do not change). What a rollout actor sends to the reward servers: a 224-pixel
    uint8 image is about 1/21 of a 1024x1024 one."""
    return tuple(images if spec is None else spec.apply(images).contiguous() for spec in inputs)


def initial_noise(policy: Policy, num_prompts: int, group_size: int, shared: bool, generator: torch.Generator) -> torch.Tensor:
    """``(num_prompts * group_size, *latent)`` standard normal latents, rows of a group equal
    when ``shared``."""
    if shared:
        noise = policy.initial_noise(num_prompts, generator)
        return noise.repeat_interleave(group_size, dim=0)
    return policy.initial_noise(num_prompts * group_size, generator)


def sample_groups(
    policy: Policy,
    prompts: Sequence[str],
    group_size: int,
    window: Sequence[int],
    sampling: SamplingConfig,
    grpo: GRPOConfig,
    *,
    seed: int,
    version: int = 0,
) -> RolloutOutput:
    """``group_size`` images per prompt (rows ``p*G .. p*G+G-1`` belong to prompt ``p``) and the
    trajectory of their trained steps (``grpo.algorithm`` picks MixGRPO's window or DanceGRPO's
    SDE-everywhere rollout) with every row's prompt conditioning. Deterministic given ``seed``
    and the weights."""
    if policy.pipeline_schedule and sampling.tail != "euler":
        raise ValueError(f"sampling.tail={sampling.tail} (MixGRPO-Flash) is defined on MixGRPO's grid, but this model "
                         "samples on its pipeline's; use sampling.tail=euler")
    gen = torch.Generator().manual_seed(int(seed))
    encoded = encode_guided(policy, prompts, sampling.cfg_scale, sampling.negative_prompt)
    prompt_cond = {k: v.to(policy.device) for k, v in encoded.items()}
    cond = cond_repeat(prompt_cond, group_size)
    sigmas = policy.sigmas(sampling.num_steps, sampling.shift)
    dance = grpo.algorithm == "dancegrpo"
    steps = list(range(sampling.num_steps)) if dance else list(window)
    start = 0
    if sampling.share_group_noise and steps[0] > 0:
        # A group shares its noise, so its ODE steps before the window are identical: take them
        # once per prompt, then fan out to the group (same result, 1/G of the cost).
        x = policy.initial_noise(len(prompts), gen).to(policy.device)
        x = ode_solve(_velocity_fn(policy, prompt_cond), x, sigmas[: steps[0] + 1], order=1)
        x = x.repeat_interleave(group_size, dim=0)
        start = steps[0]
    else:
        x = initial_noise(policy, len(prompts), group_size, sampling.share_group_noise, gen)
    s = sampling
    out = mixed_rollout(
        _velocity_fn(policy, cond), x.to(policy.device), sigmas, steps, start_step=start,
        noise_level=s.noise_level, sde_kind=s.sde_kind, tail=s.tail, tail_compression=s.tail_compression,
        shift=s.shift, generator=gen,
    )
    with torch.no_grad():
        images = to_uint8(policy.decode(out.x))

    recs = out.records
    batch = x.shape[0]
    lat = torch.stack([r.x.detach().float().cpu() for r in recs], dim=1)
    nxt = torch.stack([r.x_next.detach().float().cpu() for r in recs], dim=1)
    lp = torch.stack([r.log_prob.detach().float().cpu() for r in recs], dim=1)
    sig = torch.tensor([r.sigma for r in recs], dtype=torch.float32).expand(batch, -1)
    sig_n = torch.tensor([r.sigma_next for r in recs], dtype=torch.float32).expand(batch, -1)
    step_idx = torch.tensor([r.step for r in recs], dtype=torch.long).expand(batch, -1)
    if dance:
        # per sample, a random fraction of the first T-1 steps is trained (docs/algorithm.md eq. (22))
        k = max(1, int(grpo.dance_train_fraction * (sampling.num_steps - 1)))
        keep = torch.stack(
            [torch.randperm(sampling.num_steps - 1, generator=gen)[:k].sort().values for _ in range(batch)]
        )
        rows = torch.arange(batch)[:, None]
        lat, nxt, lp = lat[rows, keep], nxt[rows, keep], lp[rows, keep]
        sig, sig_n, step_idx = sig[rows, keep], sig_n[rows, keep], step_idx[rows, keep]
    traj = Trajectory(
        prompts=[p for p in prompts for _ in range(group_size)],
        latents=lat.contiguous(),
        next_latents=nxt.contiguous(),
        sigmas=sig.contiguous(),
        sigmas_next=sig_n.contiguous(),
        log_probs=lp.contiguous(),
        steps=step_idx.contiguous(),
        version=version,
        sde_kind=sampling.sde_kind,
        noise_level=sampling.noise_level,
        # what the learner's velocity needs of the prompts, in the encoders' dtype: learners hold
        # no frozen text encoder
        cond={k: v.detach().cpu().contiguous() for k, v in cond.items()},
    )
    return RolloutOutput(images=images, trajectory=traj, nfe=out.nfe * passes(cond), passes=passes(cond))


def sample_images(
    policy: Policy,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    num_steps: int = 25,
    shift: float = 3.0,
    order: int = 1,
    base_policy: Optional[Policy] = None,
    mix_fraction: float = 1.0,
    float_images: bool = False,
    batch_size: Optional[int] = None,
    cfg_scale: float = 1.0,
    negative_prompt: str = "",
) -> torch.Tensor:
    """Deterministic ODE samples, one per (prompt, seed) pair, as uint8 ``(B, 3, H, W)`` (or
    float32 in ``[0, 1]`` with ``float_images``).

    Each image's initial noise comes from its own seed, so results do not depend on batching;
    with ``batch_size`` the policy never sees more than that many images at once.
    With ``base_policy`` and ``mix_fraction < 1`` (test-time mixed-model sampling, docs/algorithm.md eq. (36)) the
    first ``round(mix_fraction * num_steps)`` steps use ``policy`` and the rest ``base_policy``.
    ``cfg_scale`` > 1: classifier-free guidance against ``negative_prompt``
    (:mod:`mixgrpo_ray.models.guidance`).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if batch_size is not None and len(prompts) > batch_size:
        kwargs = dict(num_steps=num_steps, shift=shift, order=order, base_policy=base_policy,
                      mix_fraction=mix_fraction, float_images=float_images, cfg_scale=cfg_scale,
                      negative_prompt=negative_prompt)
        return torch.cat([
            sample_images(policy, prompts[i : i + batch_size], seeds[i : i + batch_size], **kwargs)
            for i in range(0, len(prompts), batch_size)
        ])
    x = torch.cat([policy.initial_noise(1, torch.Generator().manual_seed(int(s))) for s in seeds])
    x = x.to(policy.device)
    sigmas = policy.sigmas(num_steps, shift)
    cond = {k: v.to(policy.device) for k, v in encode_guided(policy, prompts, cfg_scale, negative_prompt).items()}
    if base_policy is None or mix_fraction >= 1.0:
        x = ode_solve(_velocity_fn(policy, cond), x, sigmas, order=order)
    else:
        split = int(round(mix_fraction * num_steps))
        x = ode_solve(_velocity_fn(policy, cond), x, sigmas[: split + 1], order=order)
        base_cond = {k: v.to(base_policy.device)
                     for k, v in encode_guided(base_policy, prompts, cfg_scale, negative_prompt).items()}
        x = ode_solve(_velocity_fn(base_policy, base_cond), x.to(base_policy.device), sigmas[split:], order=order)
        policy = base_policy
    with torch.no_grad():
        images = policy.decode(x)
    return images.float().cpu() if float_images else to_uint8(images)
