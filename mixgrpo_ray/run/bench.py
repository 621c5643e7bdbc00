"""Side-by-side cost per iteration of DanceGRPO, MixGRPO, MixGRPO-Flash and Flash* (docs/algorithm.md eq. (38)).

``mixgrpo-ray bench`` (``make bench``; command line: :mod:`mixgrpo_ray.cli.bench`) runs the two
costly phases of an iteration — rollout (sampling a group with the old policy) and the learner's
GRPO update — for every variant on the same model, batch and machine, interleaving the variants
round by round so that machine noise hits them alike, and prints each variant's time as a ratio
to DanceGRPO's next to the paper's ratios. Flash's window slides, so its rollout cost is averaged
over window starts. Reward scoring is excluded (the same for every variant).
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass

import torch

from mixgrpo_ray.algo.rollout import sample_groups
from mixgrpo_ray.algo.update import GRPOTrainer, update_plan
from mixgrpo_ray.config import GRPOConfig, OptimConfig, SamplingConfig

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
    trainer.train_iteration(out.trajectory, adv, update_plan(n, n, 1, seed))
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
