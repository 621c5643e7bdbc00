"""The memory of a hybrid worker (``run.placement=colocated``) and which weights it samples with.

A hybrid worker is a learner rank and a rollout actor on one GPU. It holds, per GPU (GB = 1e9
bytes; P transformer parameters, c bytes per compute-dtype value, N workers):

* throughout: the learner rank's fp32 weights and AdamW state (1/N each under fsdp, see
  :func:`~mixgrpo_ray.plan.memory_plan.learner_rows`); with ``copy`` a whole compute-dtype copy of
  the transformer, ``c P`` (``module`` samples on the training module itself); the text encoders
  and VAE in the compute dtype, unless ``rollout.offload_encoders`` keeps them in host memory;
  one runtime (3 GB: one process);
* plus the largest of the phases, which take turns and never coexist: training (gradients, which
  are freed after the iteration's last update, fsdp's gathered blocks and block gradient, the
  training activations of the learner rows), sampling (the no-grad activations of one call's
  images, 4 T d bytes per image as for a rollout actor, and under fsdp with ``module`` two gathered
  compute-dtype blocks), and with offloading encoding/decoding (the largest frozen part on the GPU).

Reward replicas with a fraction of a GPU are placed on the same GPUs and counted there by
:mod:`mixgrpo_ray.plan.gpu_packing`.

Weights moved per iteration by sampling, per worker: ``module`` under fsdp all-gathers every
block's compute-dtype weights for each forward, ``c P (N-1)/N`` bytes per sampling forward;
``copy`` gathers them once, ``c P (N-1)/N`` per iteration (under replicate neither moves any).
"""

from __future__ import annotations

from typing import Optional

from mixgrpo_ray.config import Config
from mixgrpo_ray.plan.memory_plan import (GB, RUNTIME_GB, ModelSize, _compute_bytes, fits, guidance_passes, learner_rows,
                                          reward_rows)

#: what ``rollout.colocated_weights=auto`` assumes a GPU holds when ``learner.gpu_memory_gb`` is 0
DEFAULT_GPU_GB = 80.0


def hybrid_rows(cfg: Config, size: ModelSize, weights: str) -> list[tuple[str, float]]:
    """``(item, GB)`` of one hybrid worker sampling with ``weights`` (``module`` or ``copy``): what
    stays on the GPU throughout, then the largest phase's transient memory (see the module
    docstring)."""
    c = _compute_bytes(cfg, cfg.learner.num_gpus > 0)
    n, fsdp = cfg.learner.num_workers, cfg.learner.strategy == "fsdp"
    learner = learner_rows(cfg, size, n, cfg.learner.strategy)
    resident = [(k, v) for k, v in learner if k.startswith(("weights", "AdamW", "LoRA"))]
    training = [(k, v) for k, v in learner if k.startswith(("gradients", "gathered", "block gradient", "activations"))]
    if weights == "copy":
        resident.append(("sampling copy (compute dtype)", c * size.params / GB))
    frozen = {name: c * count / GB for name, count in size.frozen.items()}
    if not cfg.rollout.offload_encoders:
        resident += [(f"{name} ({cfg.model.kind})", v) for name, v in frozen.items()]
    images = cfg.grpo.group_size * prompts_per_call(cfg) * guidance_passes(cfg)
    sampling = [(f"activations (no grad) x{images}", 4 * size.tokens * size.hidden * images / GB)]
    if weights == "module" and fsdp:
        sampling.append(("gathered blocks", 2 * c * size.block_max / GB))
    phases = {"training": training, "sampling": sampling}
    if cfg.rollout.offload_encoders and frozen:  # each frozen part visits the GPU on its own
        name = max(frozen, key=frozen.get)
        phases["encoding/decoding"] = [(f"{name} on the GPU", frozen[name])]
    phase = max(phases, key=lambda p: sum(v for _, v in phases[p]))
    return resident + [(f"largest phase: {phase}", sum(v for _, v in phases[phase])), ("runtime", RUNTIME_GB)]


def prompts_per_call(cfg: Config) -> int:
    """Prompts in one colocated sampling call (each worker's share, or ``rollout.prompts_per_call``)."""
    n = cfg.learner.num_workers
    return cfg.rollout.prompts_per_call or max(1, -(-cfg.data.prompts_per_iteration // n))


def sampling_forwards(cfg: Config) -> int:
    """Sampling forwards a worker runs per iteration (its calls x model evaluations per call)."""
    from mixgrpo_ray.plan.iteration_time import image_steps

    calls = max(1, -(-cfg.data.prompts_per_iteration // prompts_per_call(cfg)) // cfg.learner.num_workers)
    return calls * image_steps(cfg)[2]


def weights_moved(cfg: Config, size: ModelSize, weights: str) -> float:
    """Bytes of sampling weights one worker receives per iteration (see the module docstring)."""
    n = cfg.learner.num_workers
    if cfg.learner.strategy != "fsdp" or n == 1:
        return 0.0
    gathered = _compute_bytes(cfg, cfg.learner.num_gpus > 0) * size.params * (n - 1) / n
    return gathered * (sampling_forwards(cfg) if weights == "module" else 1)


def sampling_weights(cfg: Config, size: Optional[ModelSize] = None, gpu_gb: Optional[float] = None) -> str:
    """``rollout.colocated_weights`` resolved: as set, else (``auto``) ``module`` under replicate
    (the module is whole already) and under fsdp ``copy`` when a worker with the copy and the
    reward replicas Ray may put beside it fits its GPU (``gpu_gb``, else ``learner.gpu_memory_gb``,
    else 80 GB; always on CPU), else ``module``."""
    chosen = cfg.rollout.colocated_weights
    if chosen != "auto":
        return chosen
    if cfg.learner.strategy != "fsdp":
        return "module"
    if cfg.learner.num_gpus <= 0:
        return "copy"
    if size is None:
        from mixgrpo_ray.plan.memory_plan import model_size

        size = model_size(cfg)
    gpu_gb = gpu_gb or cfg.learner.gpu_memory_gb or DEFAULT_GPU_GB
    beside = [("reward replicas beside it (at most)", rewards_beside(cfg))]
    return "copy" if fits(hybrid_rows(cfg, size, "copy") + beside, gpu_gb) else "module"


def rewards_beside(cfg: Config) -> float:
    """The most reward-replica memory (GB) Ray could place on one hybrid worker's GPU: the
    heaviest replicas whose GPU fractions fit beside ``learner.num_gpus``."""
    room = 1.0 - cfg.learner.num_gpus % 1.0 if cfg.learner.num_gpus % 1.0 else 0.0
    replicas = []
    for rc in cfg.rewards.values():
        rows = reward_rows(rc)
        if 0 < rc.num_gpus < 1 and rows is not None:
            replicas += [(sum(v for _, v in rows), rc.num_gpus)] * rc.replicas
    total = 0.0
    for memory, fraction in sorted(replicas, reverse=True):
        if fraction <= room + 1e-9:
            room -= fraction
            total += memory
    return total
