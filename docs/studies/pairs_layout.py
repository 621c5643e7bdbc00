"""What the `pair_layout` gains of a pairs study are made of: drawing both colours, or putting them
on the right sides.

`pair_layout` is sigmoid(d / 2 px) x p_A x p_B (mixgrpo_ray.models.tiny.pairs_rewards): it rises
when both requested colours are drawn (presence p) and when A lands on the named side of B (d > 0).
Only the second is composition. For the base model and each run's final checkpoint of a study
folder, this samples the held-out prompts (25 Euler steps, shift 3, noise seeds 0..215, as the
runs' evaluation draws its first seed) and prints, mean ± s.e. over the study's seeds:

* both drawn: the share of images in which both colours are fully present (p_A = p_B = 1);
* right side: among those, the share with A's centroid on the named side of B's (d > 0), over
  all prompts and split into left/right and above/below prompts;
* pair_layout: the diagnostic itself, for reference.

    .venv/bin/python docs/studies/pairs_layout.py STUDY_FOLDER [--threads N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from mixgrpo_ray.common.stats import mean_se
from mixgrpo_ray.models.tiny import pairs_task
from mixgrpo_ray.models.tiny.pairs_rewards import PairLayoutReward
from mixgrpo_ray.sample import load_policy
from mixgrpo_ray.eval.tiny_scores import sample_prompts


def layout_parts(images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    """Both-drawn share, right-side share among those, and mean pair_layout of ``images``."""
    reward = PairLayoutReward()
    found, geo = reward.located(images, prompts)
    both = (found["a"][0] >= 1.0) & (found["b"][0] >= 1.0)
    along_x = geo["axis"] == 0
    right = (reward.displacement(found["a"], found["b"], geo) > 0) & both

    def share(among: torch.Tensor) -> float:
        return float((right & among).sum() / (both & among).sum().clamp(min=1))

    return {
        "both drawn": float(both.float().mean()),
        "right side": share(torch.ones_like(both)),
        "right side, left/right": share(along_x),
        "right side, above/below": share(~along_x),
        "pair_layout": float(reward.layout(found["a"], found["b"], geo).mean()),
    }


def evaluate(checkpoint: str | None, prompts: list[str]) -> dict[str, float]:
    policy = load_policy("builtin:tiny_pairs", False, 0, checkpoint, "pairs")
    policy.transformer.eval()
    return layout_parts(sample_prompts(policy, prompts, seed=0), prompts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", type=Path, help="a study folder of a grid run on the tiny_pairs preset")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    prompts = pairs_task.eval_prompts()
    rows = {"base model": [evaluate(None, prompts)]}
    for config in sorted((args.study / "runs").iterdir()):
        for run in sorted(config.glob("seed-*")):
            weights = sorted(run.glob("checkpoints/iter_*/weights.safetensors"))
            if not weights:
                print(f"{run}: no checkpoint, skipped", file=sys.stderr)
                continue
            rows.setdefault(config.name, []).append(evaluate(str(weights[-1]), prompts))
    keys = ["both drawn", "right side", "right side, left/right", "right side, above/below", "pair_layout"]
    print("| configuration | seeds | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for name, values in rows.items():
        cells = []
        for k in keys:
            mean, se = mean_se(torch.tensor([v[k] for v in values]))
            cells.append(f"{mean:.3f}" + (f" ± {se:.3f}" if se is not None else ""))
        print(f"| {name} | {len(values)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
