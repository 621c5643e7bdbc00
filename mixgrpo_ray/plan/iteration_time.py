"""Seconds per iteration of a run's layouts, estimated from the model's cost per image-step and
the counted model evaluations (``mixgrpo-ray plan --gpu-tflops``).

What the estimate assumes (docs/scaling.md gives the table):

* one image-step (one transformer forward for one image) costs ``F`` FLOPs, counted by torch's
  FLOP counter on a meta-device forward of the configured transformer at the configured size
  (every matmul and attention product; :func:`~mixgrpo_ray.plan.memory_plan.forward_flops`;
  FLUX.1-dev at 720x720 with 512 prompt tokens: 37.3 TFLOP), and a GPU sustains ``--gpu-tflops``
  (default 400: about 40% of an H100 SXM's 989 dense bf16 TFLOP/s) on every forward and backward;
* sampling: per image, the model evaluations of the rollout averaged over the run's windows,
  a group's pre-window ODE steps counted once per group when it shares its noise
  (``sampling.share_group_noise``); training: per sample, every trained step's forward and
  backward, ``3 F``, plus one more forward with gradient checkpointing;
* the sync pipeline: sampling, then training, then the next version (rewards, text encoding,
  VAE decoding and weight movement are left out: together a few percent for FLUX; the weight
  bytes each layout moves are reported beside the time).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from mixgrpo_ray.config import Config
from mixgrpo_ray.core.mixed_rollout import rollout_nfe
from mixgrpo_ray.core.window import SlidingWindow
from mixgrpo_ray.plan.memory_plan import ModelSize, guidance_passes

#: sustained TFLOP/s of one GPU assumed when --gpu-tflops is not given (see the module docstring)
DEFAULT_TFLOPS = 400.0
#: windows averaged over (a run's first iterations; the window schedule repeats after them)
MAX_WINDOWS = 1000


def flops_per_image_step(size: ModelSize) -> float:
    """FLOPs of one transformer forward for one image (counted; see the module docstring)."""
    if size.forward_flops <= 0:
        raise ValueError("the model size was not counted with its forward FLOPs (plan.memory_plan.model_size)")
    return size.forward_flops


def image_steps(cfg: Config) -> tuple[float, int, float]:
    """``(image-steps per image sampled, trained steps per sample, model evaluations per call)``,
    averaged over the run's windows."""
    s, g = cfg.sampling, cfg.grpo
    if g.algorithm == "dancegrpo":
        return float(s.num_steps), max(1, int(g.dance_train_fraction * (s.num_steps - 1))), float(s.num_steps)
    window = SlidingWindow(num_steps=s.num_steps, seed=cfg.run.seed, **vars(cfg.window))
    per_image = forwards = 0.0
    count = max(1, min(cfg.run.iterations, MAX_WINDOWS))
    for _ in range(count):
        steps = window.current()
        nfe = rollout_nfe(s.num_steps, steps, s.tail, s.tail_compression)
        shared = steps[0] if s.share_group_noise else 0
        per_image += nfe - shared + shared / g.group_size
        forwards += nfe
        window.step()
    return per_image / count, cfg.window.size, forwards / count


@dataclass
class LayoutTime:
    """One layout's estimate: GPUs busy sampling and training, and the seconds of each phase."""

    layout: str
    detail: str  # who does what, in words
    sample_s: float
    train_s: float
    weights_gb: float  # weight bytes moved per iteration (all GPUs together), GB

    @property
    def iteration_s(self) -> float:
        return self.sample_s + self.train_s


def _costs(cfg: Config, size: ModelSize, tflops: float) -> tuple[float, float]:
    """Seconds per image sampled and per sample trained on one GPU."""
    per_image, trained, _ = image_steps(cfg)
    # classifier-free guidance evaluates every velocity on a doubled batch (docs/algorithm.md eq. (1a))
    step_s = flops_per_image_step(size) * guidance_passes(cfg) / (tflops * 1e12)
    passes = 3 + (1 if cfg.model.gradient_checkpointing else 0)
    return per_image * step_s, trained * passes * step_s


def colocated_time(cfg: Config, size: ModelSize, tflops: float, weights: str) -> LayoutTime:
    """``learner.num_workers`` hybrid workers each sampling its prompts, then training its share."""
    from mixgrpo_ray.plan.colocated_plan import weights_moved

    n = cfg.learner.num_workers
    image_s, sample_train_s = _costs(cfg, size, tflops)
    prompts = math.ceil(cfg.data.prompts_per_iteration / n)
    samples = cfg.data.prompts_per_iteration * cfg.grpo.group_size / n
    moved = weights_moved(cfg, size, weights) * n / 1e9
    return LayoutTime("colocated", f"{n} hybrid workers sample {prompts} prompt(s) each, then train",
                      prompts * cfg.grpo.group_size * image_s, samples * sample_train_s, moved)


def disaggregated_time(cfg: Config, size: ModelSize, tflops: float, learners: int, rollouts: int) -> LayoutTime:
    """``rollouts`` rollout GPUs sample every prompt while the learners wait, then ``learners``
    train while the rollout GPUs wait; the new weights are broadcast to every rollout GPU."""
    image_s, sample_train_s = _costs(cfg, size, tflops)
    prompts = math.ceil(cfg.data.prompts_per_iteration / rollouts)
    samples = cfg.data.prompts_per_iteration * cfg.grpo.group_size / learners
    publish = 2 if cfg.learner.publish_dtype == "bf16" else 4
    moved = publish * size.params * rollouts / 1e9
    return LayoutTime("disaggregated", f"{rollouts} rollout GPU(s) sample, then {learners} learner GPU(s) train",
                      prompts * cfg.grpo.group_size * image_s, samples * sample_train_s, moved)


def as_disaggregated(cfg: Config, learners: int, rollouts: int) -> Config:
    """``cfg`` laid out disaggregated with ``learners`` ranks and ``rollouts`` rollout actors."""
    out = copy.deepcopy(cfg)
    out.run.placement = "disaggregated"
    out.rollout.colocated_weights = "auto"
    out.learner.num_workers = learners
    out.rollout.num_workers = rollouts
    return out


def time_lines(times: list[LayoutTime]) -> list[str]:
    """One line per layout, and the ratio of the first to the others."""
    lines = [f"s/iteration ({t.layout}): {t.iteration_s:7.1f} s = sampling {t.sample_s:.1f} s + training "
             f"{t.train_s:.1f} s; {t.detail}; weights moved {t.weights_gb:.1f} GB" for t in times]
    if len(times) > 1 and times[0].iteration_s > 0:
        lines.append(f"{times[1].layout} takes {times[1].iteration_s / times[0].iteration_s:.2f}x the time of "
                     f"{times[0].layout} per iteration (estimate; see mixgrpo_ray/plan/iteration_time.py)")
    return lines
