"""Side-by-side cost per iteration of DanceGRPO, MixGRPO, MixGRPO-Flash and Flash* (docs/algorithm.md eq. (38)).

``mixgrpo-ray bench`` (``make bench``; command line: :mod:`mixgrpo_ray.cli.bench_cli`) runs the two
costly phases of an iteration — rollout (sampling a group with the old policy) and the learner's
GRPO update — for every variant on the same model, batch and machine, interleaving the variants
round by round so that machine noise hits them alike, and prints each variant's time as a ratio
to DanceGRPO's next to the paper's ratios. Flash's window slides, so its rollout cost is averaged
over window starts. Reward scoring is excluded (the same for every variant).

:func:`reward_traffic` (printed by ``mixgrpo-ray bench phases``) counts the bytes the reward
servers receive per iteration with images as sampled and with the images each reward's declared
input needs (what rollout actors send).
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch

from mixgrpo_ray.algo.rollout import images_for, sample_groups
from mixgrpo_ray.algo.update import GRPOTrainer, update_assignment
from mixgrpo_ray.config import GRPOConfig, OptimConfig, SamplingConfig
from mixgrpo_ray.models.reward_input import RewardInput

PAPER_RATIO = {"dancegrpo": 1.0, "mixgrpo": 0.52, "mixgrpo_flash": 0.39, "mixgrpo_flash_star": 0.29}


@dataclass
class Variant:
    name: str
    sampling: SamplingConfig
    grpo: GRPOConfig
    window_starts: list[int]  # the starts the window visits (sampled round-robin)


def variants(num_steps: int = 25, size: int = 4) -> list[Variant]:
    last = num_steps - 2 - size
    progressive = list(range(0, last + 1))
    mix, dance = GRPOConfig(), GRPOConfig(algorithm="dancegrpo")
    return [
        Variant("dancegrpo", SamplingConfig(num_steps=num_steps, sde_kind="dance_grpo", noise_level=0.3), dance, [0]),
        Variant("mixgrpo", SamplingConfig(num_steps=num_steps), mix, progressive),
        Variant("mixgrpo_flash", SamplingConfig(num_steps=num_steps, tail="dpm2", tail_compression=0.4), mix, progressive),
        Variant("mixgrpo_flash_star", SamplingConfig(num_steps=num_steps, tail="dpm2", tail_compression=0.2), mix, [0]),
    ]


def one_iteration(policy, variant: Variant, prompts, group: int, start: int, size: int, seed: int) -> dict:
    t0 = time.perf_counter()
    out = sample_groups(policy, prompts, group, list(range(start, start + size)), variant.sampling, variant.grpo,
                        seed=seed)
    t1 = time.perf_counter()
    n = len(out.trajectory)
    trainer = GRPOTrainer(policy, OptimConfig(), clip_range=variant.grpo.clip_range)
    for params in trainer.optimizer.param_groups:  # lr 0: measure the cost, keep the weights
        params["lr"] = 0.0
    adv = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    trainer.train_iteration(out.trajectory, adv, update_assignment(n, n, 1, seed))
    t2 = time.perf_counter()
    return {"rollout": t1 - t0, "train": t2 - t1, "nfe_rollout": out.nfe, "nfe_policy": out.trajectory.num_trained_steps}


def run_benchmark(policy, prompts, *, group: int, rounds: int, size: int = 4, num_steps: int = 25,
                  progress: bool = True) -> dict[str, dict]:
    vs = variants(num_steps, size)
    times = {v.name: [] for v in vs}
    nfe = {v.name: [] for v in vs}
    policy_nfe = {}
    one_iteration(policy, vs[1], prompts, group, 0, size, seed=0)  # warm-up
    for r in range(rounds):
        for v in vs:
            start = v.window_starts[(r * len(v.window_starts)) // rounds]  # spread the slide over rounds
            res = one_iteration(policy, v, prompts, group, start, size, seed=r)
            times[v.name].append(res["rollout"] + res["train"])
            nfe[v.name].append(res["nfe_rollout"])
            policy_nfe[v.name] = res["nfe_policy"]
        if progress:
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    base = statistics.median(times["dancegrpo"])
    return {
        name: {
            "median_s": statistics.median(t),
            "ratio": statistics.median(t) / base,
            "paper_ratio": PAPER_RATIO[name],
            "nfe_rollout": statistics.mean(nfe[name]),
            "nfe_policy": policy_nfe[name],
        }
        for name, t in times.items()
    }


def format_table(results: dict[str, dict]) -> str:
    lines = [
        f"{'variant':<20} {'rollout NFE':>11} {'policy NFE':>10} {'s/iter':>8} {'ratio':>7} {'paper':>7}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<20} {r['nfe_rollout']:>11.1f} {r['nfe_policy']:>10d} {r['median_s']:>8.3f} "
            f"{r['ratio']:>7.2f} {r['paper_ratio']:>7.2f}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Reward traffic: bytes shipped to the reward servers per iteration, before and after reward inputs
# ------------------------------------------------------------------------------------------------

#: the inputs the flux preset's rewards declare with the real checkpoints (HPS v2.1 ViT-H-14 at
#: 224, float; PickScore's laion ViT-H-14 processor: shortest edge 224; ImageReward's BLIP ViT-L at
#: 224 through PIL) — what :meth:`~mixgrpo_ray.models.reward.RewardModel.input` returns for them
FLUX_REWARD_INPUTS: dict[str, Optional[RewardInput]] = {
    "hps": RewardInput(224, "longest_edge_float"),
    "pickscore": RewardInput(224, "shortest_edge"),
    "imagereward": RewardInput(224, "shortest_edge_pil"),
}


def reward_traffic(inputs: dict[str, Optional[RewardInput]], height: int, width: int, images: int) -> dict:
    """Bytes the reward replicas receive per iteration of ``images`` images of ``height x width``:
    ``before`` every pool reads the uint8 image as sampled; ``after`` each pool reads the object of
    its declared input (``inputs``: reward name -> :class:`RewardInput` or ``None``), as a rollout
    actor makes it (:func:`~mixgrpo_ray.algo.rollout.images_for` on one real image, so dtypes and
    shapes are the real ones). ``objects_*``: bytes the rollout actors put in the object store."""
    sample = torch.randint(0, 256, (1, 3, height, width), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    distinct = list(dict.fromkeys(inputs.values()))
    per_image = {spec: t.numel() * t.element_size() for spec, t in zip(distinct, images_for(sample, distinct))}
    full = sample.numel() * sample.element_size()
    before = full * images * len(inputs)
    after = sum(per_image[spec] for spec in inputs.values()) * images
    return {
        "image": f"{height}x{width}", "images": images, "rewards": {n: str(s) for n, s in inputs.items()},
        "before_bytes": before, "after_bytes": after, "ratio": before / after if after else float("inf"),
        "per_reward_bytes": {n: per_image[s] * images for n, s in inputs.items()},
        "objects_before_bytes": full * images, "objects_after_bytes": sum(per_image.values()) * images,
    }


def format_traffic(result: dict) -> str:
    mb = 1 << 20
    lines = [f"reward traffic per iteration, {result['images']} images of {result['image']}:"]
    for name, spec in result["rewards"].items():
        lines.append(f"  {name:<12} {spec:<26} {result['per_reward_bytes'][name] / mb:>8.2f} MiB")
    lines.append(f"  to the reward servers: {result['before_bytes'] / mb:.1f} MiB as sampled -> "
                 f"{result['after_bytes'] / mb:.1f} MiB resized ahead ({result['ratio']:.1f}x less)")
    return "\n".join(lines)
