"""The rows of ``metrics.jsonl``: one per iteration, and the held-out evaluation summary.

Metric names are a stable user API (dashboards, scripts and the README read them)."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from mixgrpo_ray.algo.rollout import RolloutMeta
from mixgrpo_ray.common.stats import mean_se

#: training statistics of the learner copied into the row as ``train/<key>``
TRAIN_KEYS = ("loss", "ratio_mean", "ratio_min", "ratio_max", "clip_fraction", "approx_kl", "grad_norm",
              "first_ratio_mean", "first_ratio_min", "first_ratio_max", "updates", "importance_weight_mean",
              "moved_samples")  # moved_samples: run.placement=colocated only (rows sent to another worker)
#: phases of an iteration, each logged as ``time/<phase>_s``
PHASES = ("rollout", "reward", "train", "sync")


def iteration_row(
    iteration: int,
    window_start: int,
    version: int,
    metas: Sequence[RolloutMeta],
    scores: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    can_fail: Mapping[str, bool],
    advantages: torch.Tensor,
    train_stats: Mapping[str, float],
    seconds: Mapping[str, float],
) -> dict:
    """One iteration's metrics. ``weights`` are the trained rewards' weights; ``seconds`` the
    phase times (``rollout``, ``reward``, ``train``, ``sync``)."""
    row: dict = {
        "iteration": iteration,
        "window_start": window_start,
        "weight_version": version,
        "rollout_versions": sorted({m.version for m in metas}),
    }
    total = 0.0
    wsum = sum(weights.values())
    for name, s in scores.items():
        ok = s[torch.isfinite(s)]
        mean = float(ok.mean()) if ok.numel() else float("nan")
        row[f"reward/{name}"] = mean
        row[f"reward/{name}_std"] = float(ok.std()) if ok.numel() > 1 else 0.0
        if can_fail.get(name, False):
            row[f"reward/{name}_failures"] = int(s.numel() - ok.numel())
        if name in weights:
            total += weights[name] / wsum * mean
    row["reward_mean"] = total
    row["advantage_abs_mean"] = float(advantages.abs().mean())
    row["advantage_std"] = float(advantages.std()) if advantages.numel() > 1 else 0.0
    for key in TRAIN_KEYS:
        if key in train_stats:
            row[f"train/{key}"] = train_stats[key]
    row["nfe/rollout"] = max(m.nfe for m in metas)
    row["nfe/policy"] = metas[0].num_trained_steps * metas[0].passes  # both passes of a guided velocity
    for phase in PHASES:
        row[f"time/{phase}_s"] = seconds.get(phase, 0.0)
    row["time/iteration_s"] = sum(seconds.get(p, 0.0) for p in PHASES)
    if any(m.memory_gb for m in metas):  # peak memory of the largest rollout actor / learner rank so far
        row["memory/rollout_peak_gb"] = max(m.memory_gb for m in metas)
    if train_stats.get("memory_gb"):
        row["memory/learner_peak_gb"] = float(train_stats["memory_gb"])
    images = sum(m.num_images for m in metas)
    row["images_per_second"] = images / max(seconds.get("rollout", 0.0), 1e-9)
    return row


def eval_row(scores: Mapping[str, torch.Tensor]) -> dict:
    """``eval/reward/<name>`` (mean over finite scores) and ``eval/reward/<name>_se`` per reward."""
    out: dict = {}
    for name, s in scores.items():
        mean, se = mean_se(s)
        out[f"eval/reward/{name}"] = mean
        out[f"eval/reward/{name}_se"] = se if se is not None else 0.0
    return out


def rollout_columns(iteration: int, prompts: Sequence[str], group_size: int, versions: Sequence[int],
                    window_start: int, advantages: torch.Tensor, scores: Mapping[str, torch.Tensor]) -> dict:
    """The columns of ``rollouts/iter_N.parquet``: one row per sampled image."""
    n = len(prompts)
    cols = {
        "iteration": [iteration] * n,
        "prompt": list(prompts),
        "group": [i // group_size for i in range(n)],
        "sample": [i % group_size for i in range(n)],
        "weight_version": list(versions),
        "window_start": [window_start] * n,
        "advantage": advantages.tolist(),
    }
    for name, s in scores.items():
        cols[f"reward/{name}"] = s.tolist()
    return cols
