"""The recorded SDE transitions of a rollout: what the learner trains on (no Ray).

One row per sampled image, ``K`` trained steps per row (the window for MixGRPO, a random
subset of steps for DanceGRPO). Latents are float32: bf16 storage biases the policy ratio.
``cond`` carries each row's prompt conditioning as the rollout's policy encoded it (the FLUX
T5/CLIP embeddings in the encoders' dtype), so a learner needs no frozen text encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch


@dataclass
class Trajectory:
    prompts: list[str]  # (B,)
    latents: torch.Tensor  # (B, K, *latent) input latent of each trained step
    next_latents: torch.Tensor  # (B, K, *latent) sampled output of each trained step
    sigmas: torch.Tensor  # (B, K)
    sigmas_next: torch.Tensor  # (B, K)
    log_probs: torch.Tensor  # (B, K) log-prob under the sampling policy
    steps: torch.Tensor  # (B, K) step indices (long)
    version: int  # weight version the rollout sampled with
    sde_kind: str
    noise_level: float
    #: ``{name: (B, ...)}`` prompt conditioning of every row (``Policy.encode_prompts`` of its
    #: prompt); ``None`` for a trajectory recorded without it
    cond: Optional[dict[str, torch.Tensor]] = None

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_trained_steps(self) -> int:
        """``K``: trained steps per sample."""
        return int(self.latents.shape[1])

    def select(self, index: Sequence[int] | torch.Tensor) -> "Trajectory":
        """The rows ``index`` (in that order)."""
        idx = torch.as_tensor(list(index) if not isinstance(index, torch.Tensor) else index, dtype=torch.long)
        return Trajectory(
            prompts=[self.prompts[i] for i in idx.tolist()],
            latents=self.latents[idx],
            next_latents=self.next_latents[idx],
            sigmas=self.sigmas[idx],
            sigmas_next=self.sigmas_next[idx],
            log_probs=self.log_probs[idx],
            steps=self.steps[idx],
            version=self.version,
            sde_kind=self.sde_kind,
            noise_level=self.noise_level,
            cond=None if self.cond is None else {k: v[idx] for k, v in self.cond.items()},
        )

    @staticmethod
    def concat(parts: Sequence["Trajectory"]) -> "Trajectory":
        """Rows of ``parts`` stacked in order. They must share kind, noise level and step count;
        the result carries the oldest version among them."""
        if not parts:
            raise ValueError("Trajectory.concat needs at least one trajectory")
        first = parts[0]
        for p in parts[1:]:
            if (p.sde_kind, p.noise_level, p.num_trained_steps) != (first.sde_kind, first.noise_level, first.num_trained_steps):
                raise ValueError("cannot concatenate trajectories of different SDE kind, noise or step count")
        with_cond = [p.cond is not None for p in parts]
        if any(with_cond) and not all(with_cond):
            raise ValueError("cannot concatenate trajectories with and without prompt conditioning")
        if all(with_cond) and any(set(p.cond) != set(first.cond) for p in parts):
            raise ValueError("cannot concatenate trajectories whose prompt conditionings have different keys")
        return Trajectory(
            prompts=[s for p in parts for s in p.prompts],
            latents=torch.cat([p.latents for p in parts]),
            next_latents=torch.cat([p.next_latents for p in parts]),
            sigmas=torch.cat([p.sigmas for p in parts]),
            sigmas_next=torch.cat([p.sigmas_next for p in parts]),
            log_probs=torch.cat([p.log_probs for p in parts]),
            steps=torch.cat([p.steps for p in parts]),
            version=min(p.version for p in parts),
            sde_kind=first.sde_kind,
            noise_level=first.noise_level,
            cond={k: torch.cat([p.cond[k] for p in parts]) for k in first.cond} if all(with_cond) else None,
        )
