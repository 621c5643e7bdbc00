"""Side-by-side cost per iteration of DanceGRPO, MixGRPO, MixGRPO-Flash and Flash* (SPEC §9).

``python -m mixgrpo_ray.run.bench`` (or ``make bench``) runs the two costly phases of an iteration —
rollout (sampling a group with the old policy) and the learner's GRPO update — for every
variant on the same model, batch and machine, interleaving the variants round by round so that
machine noise hits them alike, and prints each variant's time as a ratio to DanceGRPO's next to
the paper's ratios. Flash's window slides, so its rollout cost is averaged over window starts.
Reward scoring is excluded (the same for every variant).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from mixgrpo_ray.algo.update import GRPOTrainer, OptimSettings, update_plan
from mixgrpo_ray.algo.rollout import RolloutSettings, sample_groups

PAPER_RATIO = {"dancegrpo": 1.0, "mixgrpo": 0.52, "mixgrpo_flash": 0.39, "mixgrpo_flash_star": 0.29}


@dataclass
class Variant:
    name: str
    settings: RolloutSettings
    window_starts: list[int]  # the starts the window visits (sampled round-robin)


def variants(num_steps: int = 25, size: int = 4) -> list[Variant]:
    last = num_steps - 2 - size
    progressive = list(range(0, last + 1))
    return [
        Variant("dancegrpo", RolloutSettings(num_steps=num_steps, algorithm="dancegrpo", sde_kind="dance_grpo",
                                             noise_level=0.3), [0]),
        Variant("mixgrpo", RolloutSettings(num_steps=num_steps), progressive),
        Variant("mixgrpo_flash", RolloutSettings(num_steps=num_steps, tail="dpm2", tail_compression=0.4), progressive),
        Variant("mixgrpo_flash_star", RolloutSettings(num_steps=num_steps, tail="dpm2", tail_compression=0.2), [0]),
    ]


def one_iteration(policy, variant: Variant, prompts, group: int, start: int, size: int, seed: int) -> dict:
    t0 = time.perf_counter()
    out = sample_groups(policy, prompts, group, list(range(start, start + size)), variant.settings, seed=seed)
    t1 = time.perf_counter()
    n = len(out.trajectory)
    trainer = GRPOTrainer(policy, OptimSettings(lr=0.0))  # lr 0: measure the cost, keep the weights
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mixgrpo_ray.run.bench", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6, help="iterations per variant (interleaved)")
    p.add_argument("--prompts", type=int, default=2, help="prompts per iteration")
    p.add_argument("--group", type=int, default=12, help="images per prompt (SPEC: 12)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.prompts < 1 or args.group < 2 or args.threads < 1:
        print("bench: error: --rounds, --prompts, --threads must be >= 1 and --group >= 2", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    from mixgrpo_ray.models.tiny import task
    from mixgrpo_ray.models.tiny.model import TinyPolicy

    policy = TinyPolicy.from_pretrained()
    prompts = task.train_prompts()[: args.prompts]
    print(f"tiny model, {args.prompts} prompts x {args.group} images, {args.rounds} interleaved rounds, "
          f"{args.threads} thread(s)", flush=True)
    results = run_benchmark(policy, prompts, group=args.group, rounds=args.rounds)
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
