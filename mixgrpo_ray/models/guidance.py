"""True classifier-free guidance (docs/algorithm.md §1.1), for the models that need it (SD3.5;
FLUX.1-dev keeps its distilled guidance embedding and leaves ``sampling.cfg_scale`` at 1).

The guidance travels with the prompt conditioning: :func:`with_guidance` adds the negative
prompt's conditioning (keys ``uncond.<key>``) and the scale (``cfg_scale``, one value per row) to a
``cond``, so the trajectory a rollout records carries them and the learner re-evaluates exactly
the velocity the rollout sampled with (the ratio is 1 before the first update).
:func:`guided_velocity` evaluates it as one doubled batch, unconditional rows first:

    v = v_u + s (v_c - v_u)

(:meth:`Policy.guide <mixgrpo_ray.models.policy.Policy.guide>`; Qwen-Image rescales it to the
conditional velocity's norm, as its pipeline does: eq. (1b)). Two model passes per evaluation
(:func:`passes`), which the NFE metrics count.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mixgrpo_ray.models.policy import Cond, Policy

UNCOND = "uncond."
SCALE = "cfg_scale"


def with_guidance(cond: Cond, negative: Cond, scale: float) -> Cond:
    """``cond`` (B rows) with the negative conditioning ``negative`` (1 row, or B) and the scale
    added; unchanged when ``scale`` is 1 (no guidance)."""
    if scale == 1.0:
        return dict(cond)
    batch = next(iter(cond.values())).shape[0]
    out = dict(cond)
    for key, value in negative.items():
        if key not in cond:
            raise ValueError(f"negative prompt conditioning has {key!r}, the prompts' has not")
        out[UNCOND + key] = value.expand(batch, *value.shape[1:]).clone() if value.shape[0] == 1 else value
    out[SCALE] = torch.full((batch,), float(scale), dtype=torch.float32, device=next(iter(cond.values())).device)
    return out


def guided(cond: Cond) -> bool:
    return SCALE in cond


def passes(cond: Cond) -> int:
    """Model passes per velocity evaluation with ``cond``: 2 under guidance, else 1."""
    return 2 if guided(cond) else 1


def guided_velocity(policy: Policy, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
    """The policy's velocity, guided when ``cond`` carries guidance (see the module docstring)."""
    if not guided(cond):
        return policy.velocity(x, sigma, cond)
    positive = {k: v for k, v in cond.items() if not k.startswith(UNCOND) and k != SCALE}
    both = {k: torch.cat([cond[UNCOND + k], v]) for k, v in positive.items()}
    v = policy.velocity(torch.cat([x, x]), torch.cat([sigma, sigma]), both).float()
    v_u, v_c = v.chunk(2)
    scale = cond[SCALE].to(v.device, torch.float32).view(-1, *([1] * (v.dim() - 1)))
    return policy.guide(v_c, v_u, scale)


def encode_guided(policy: Policy, prompts: Sequence[str], scale: float, negative_prompt: str = "") -> Cond:
    """``policy.encode_prompts(prompts)``, with guidance by ``scale`` against ``negative_prompt``."""
    cond = policy.encode_prompts(list(prompts))
    if scale == 1.0:
        return cond
    return with_guidance(cond, policy.encode_prompts([negative_prompt]), scale)
