"""One learner rank's GRPO update on recorded window steps (docs/algorithm.md §9, eqs. (32)–(35)). torch only, no Ray.

For every optimiser update (a chunk of ``samples_per_update`` samples, split evenly across
ranks) and every trained step ``j`` of those samples, the learner re-evaluates the recorded
transition under the current weights (velocity -> SDE mean/std -> log-prob of the recorded
``x_{j+1}``), takes the clipped GRPO loss against the rollout's log-prob, and back-propagates
``loss / K`` (K trained steps). Gradients are averaged across ranks (all-reduce), clipped by
global norm, and AdamW steps. Later chunks of an iteration are slightly off-policy, as intended.

The velocity is conditioned on the prompt embeddings the trajectory carries (recorded by the
rollout), so a learner holds no frozen text encoder. A rank fetches only the rollout calls that
hold its samples (:func:`rank_shares`).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from mixgrpo_ray.config import OptimConfig
from mixgrpo_ray.algo.sharding import all_reduce_int, all_reduce_mean, to_float
from mixgrpo_ray.core.grpo import grpo_loss
from mixgrpo_ray.models.guidance import guided_velocity
from mixgrpo_ray.models.policy import Cond, Policy
from mixgrpo_ray.core.steps import sde_log_prob, sde_mean_std
from mixgrpo_ray.core.trajectory import Trajectory


def build_optimizer(policy: Policy, s: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over the policy's trainable parameters (fp32 master weights)."""
    params = [p for p in policy.trainable_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the policy has no trainable parameters")
    return torch.optim.AdamW(params, lr=s.lr, betas=tuple(s.betas), eps=s.eps, weight_decay=s.weight_decay)


def update_assignment(num_samples: int, samples_per_update: int, world_size: int, seed: int) -> list[list[list[int]]]:
    """``plan[u][rank]``: the sample indices rank ``rank`` trains on in update ``u``.

    A seeded permutation of all samples is cut into chunks of ``samples_per_update``; each
    chunk is dealt evenly to the ranks. The same plan on 1 or N ranks covers the same samples
    per update, so the averaged gradient is the same.
    """
    if num_samples % samples_per_update or samples_per_update % world_size:
        raise ValueError(
            f"{num_samples} samples cannot be cut into updates of {samples_per_update} "
            f"split over {world_size} ranks"
        )
    perm = torch.randperm(num_samples, generator=torch.Generator().manual_seed(int(seed))).tolist()
    per_rank = samples_per_update // world_size
    plan = []
    for u in range(num_samples // samples_per_update):
        chunk = perm[u * samples_per_update : (u + 1) * samples_per_update]
        plan.append([chunk[r * per_rank : (r + 1) * per_rank] for r in range(world_size)])
    return plan


@dataclass
class RankShare:
    """What one learner rank fetches and trains on in an iteration (see :func:`rank_shares`)."""

    calls: list[int]  # the rollout calls holding its samples, ascending
    rows: list[list[int]]  # per call of ``calls``, its rows within that call, ascending
    samples: list[int]  # its samples' global indices, in the order of its local trajectory
    updates: list[list[int]]  # per update, its samples as indices into its local trajectory


def rank_shares(plan: Sequence[Sequence[Sequence[int]]], call_sizes: Sequence[int]) -> list[RankShare]:
    """Per rank, the rollout calls it needs for ``plan`` (global sample indices over the calls'
    rows concatenated in order; ``call_sizes`` rows per call) and where its samples lie in them.

    A rank's local trajectory is ``concat(call[c].select(rows) for c, rows in zip(calls, rows))``,
    its samples in ascending global order; ``updates`` indexes it in the plan's order, so every
    update sees exactly the rows (and order) it would over the whole iteration.
    """
    offsets = [0]
    for n in call_sizes:
        offsets.append(offsets[-1] + int(n))
    total = offsets[-1]
    world = len(plan[0]) if plan else 0
    shares = []
    for rank in range(world):
        mine = sorted({int(i) for per_rank in plan for i in per_rank[rank]})
        if mine and not (0 <= mine[0] and mine[-1] < total):
            raise ValueError(f"the update plan names sample {mine[-1] if mine[-1] >= total else mine[0]} "
                             f"but the rollout calls hold {total}")
        local = {g: n for n, g in enumerate(mine)}
        calls: list[int] = []
        rows: list[list[int]] = []
        for g in mine:
            c = bisect.bisect_right(offsets, g) - 1
            if not calls or calls[-1] != c:
                calls.append(c)
                rows.append([])
            rows[-1].append(g - offsets[c])
        shares.append(RankShare(calls, rows, mine, [[local[int(i)] for i in per_rank[rank]] for per_rank in plan]))
    return shares


#: the training statistics a rank computes on its share of an update, reported for the whole update
OVER_RANKS = ("loss", "ratio_mean", "ratio_min", "ratio_max", "clip_fraction", "approx_kl", "importance_weight_mean")


class GRPOTrainer:
    """Holds one rank's policy and optimiser and applies GRPO updates."""

    def __init__(
        self,
        policy: Policy,
        optim: OptimConfig,
        clip_range: float,
        *,
        rank: int = 0,
        world_size: int = 1,
        process_group: Optional[object] = None,
        sharded: bool = False,
        reduce_bucket_mb: float = 64.0,
    ) -> None:
        """``sharded``: the policy's trainable module is wrapped by FSDP2, which averages the
        gradients itself (reduce-scatter); otherwise gradients are all-reduced in buckets of
        ``reduce_bucket_mb`` (see :mod:`mixgrpo_ray.algo.sharding`)."""
        self.policy = policy
        self.optim = optim
        self.clip_range = float(clip_range)
        self.rank = rank
        self.world_size = world_size
        self.group = process_group
        self.sharded = sharded
        self.reduce_bucket_bytes = int(reduce_bucket_mb * 2**20)
        self.optimizer = build_optimizer(policy, optim)
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]

    def _all_reduce_mean_grads(self) -> None:
        if self.world_size == 1 or self.sharded:
            return
        all_reduce_mean(self.params, self.world_size, self.reduce_bucket_bytes, self.group)

    def _over_ranks(self, stats: dict[str, float]) -> dict[str, float]:
        """One update's statistics on this rank's share made the whole update's: every rank
        trains equally many of its samples, so means are averaged over the ranks that have the
        statistic and ``*_min`` / ``*_max`` are the minimum / maximum over ranks (the gradient
        norm is global already). A collective: every rank calls it once per update, with whatever
        keys it has."""
        if self.world_size == 1 or not dist.is_initialized():
            return stats
        keys = list(OVER_RANKS)
        dev = self.policy.device if self.policy.device.type == "cuda" else torch.device("cpu")
        sums = torch.tensor([1.0 if k in stats else 0.0 for k in keys] + [stats.get(k, 0.0) for k in keys],
                            dtype=torch.float64, device=dev)
        mins = torch.tensor([stats.get(k, math.inf) for k in keys] + [-stats.get(k, -math.inf) for k in keys],
                            dtype=torch.float64, device=dev)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=self.group)
        dist.all_reduce(mins, op=dist.ReduceOp.MIN, group=self.group)
        n = len(keys)
        out = {k: v for k, v in stats.items() if k not in keys}
        for i, k in enumerate(keys):
            if sums[i] > 0:
                out[k] = float(mins[i] if k.endswith("_min") else -mins[n + i] if k.endswith("_max")
                               else sums[n + i] / sums[i])
        return out

    def _sum_over_ranks(self, n: int) -> int:
        if self.world_size == 1 or self.group is None:
            return n
        dev = self.policy.device if self.policy.device.type == "cuda" else torch.device("cpu")
        return all_reduce_int(n, dev, group=self.group)

    def step_log_probs(self, batch: Trajectory, cond, j: int) -> torch.Tensor:
        """New log-probs ``(B,)`` of the recorded transition ``j`` of every row of ``batch``."""
        dev = self.policy.device
        x = batch.latents[:, j].to(dev)
        sig = batch.sigmas[:, j].to(dev)
        sig_n = batch.sigmas_next[:, j].to(dev)
        v = guided_velocity(self.policy, x, sig, cond).float()  # the rollout's guidance, if any
        mean, std = sde_mean_std(x, v, sig, sig_n, batch.noise_level, batch.sde_kind)
        return sde_log_prob(batch.next_latents[:, j].to(dev), mean, std)

    def batch_cond(self, batch: Trajectory) -> Cond:
        """The prompt conditioning of ``batch``'s rows on this rank's device: the one the rollout
        recorded (a learner policy holds no frozen text encoder), else, for a trajectory recorded
        without it, ``encode_prompts`` here."""
        cond = batch.cond if batch.cond is not None else self.policy.encode_prompts(batch.prompts)
        return {key: val.to(self.policy.device) for key, val in cond.items()}

    @torch.no_grad()
    def proximal_log_probs(self, trajectory: Trajectory, updates: Sequence[Sequence[int]]) -> dict:
        """Log-probs ``{sample: (K,)}`` of this rank's recorded transitions (``updates``: its
        sample indices per update) under the current weights, before any update of the iteration
        (the proximal policy of eq. (39))."""
        self.policy.train(False)
        out = {}
        for idx in updates:  # in the chunks the update takes, so memory stays that of one update
            idx = list(idx)
            batch = trajectory.select(idx)
            cond = self.batch_cond(batch)
            logp = torch.stack([self.step_log_probs(batch, cond, j) for j in range(batch.num_trained_steps)], dim=1)
            out.update({i: logp[n].float().cpu() for n, i in enumerate(idx)})
        return out

    def train_iteration(
        self,
        trajectory: Trajectory,
        advantages: torch.Tensor,
        plan: Sequence[Sequence[Sequence[int]]],
        *,
        proximal: bool = False,
        max_importance_weight: float = 2.0,
    ) -> dict[str, float]:
        """Apply every update of ``plan`` (see :func:`update_assignment`) for this rank.

        ``trajectory`` and ``advantages`` hold all samples of the iteration (global indices).
        See :meth:`train_updates`.
        """
        return self.train_updates(trajectory, advantages, [list(per_rank[self.rank]) for per_rank in plan],
                                  proximal=proximal, max_importance_weight=max_importance_weight)

    def train_updates(
        self,
        trajectory: Trajectory,
        advantages: torch.Tensor,
        updates: Sequence[Sequence[int]],
        *,
        proximal: bool = False,
        max_importance_weight: float = 2.0,
    ) -> dict[str, float]:
        """Apply this rank's part of every update: ``updates[u]`` are the indices (into
        ``trajectory`` and ``advantages``) of its samples in update ``u`` (every rank trains
        equally many, as :func:`update_assignment` deals them).

        Returns averaged statistics of the whole updates (every rank's share together, the same
        on every rank); ``first_ratio_*`` are those of the first update, where the
        policy still equals the sampling policy (ratio 1 up to numerical noise). A sample whose
        advantage or log-probs are not finite is left out of its update's loss (the mean runs over
        the others); an update whose (all-reduced) gradient is still not finite is skipped,
        identically on every rank. Both are counted, over all ranks, in ``nonfinite_samples``.

        ``proximal`` (rollouts sampled with older weights, the async pipeline): the clip acts on
        the ratio to the log-probs of the weights this iteration starts from, and the truncated
        proximal/behaviour ratio weights each element (docs/algorithm.md eqs. (39)–(40)).
        """
        prox = self.proximal_log_probs(trajectory, updates) if proximal else {}
        self.policy.train(True)
        dev = self.policy.device
        totals: dict[str, float] = {}
        first: dict[str, float] = {}
        k = trajectory.num_trained_steps
        skipped = 0  # samples of updates skipped on every rank (already a total over the ranks)
        dropped = 0  # this rank's samples left out of an applied update
        for u, idx in enumerate(updates):
            idx = list(idx)
            batch = trajectory.select(idx)
            adv = advantages[idx].to(dev, torch.float32)
            cond = self.batch_cond(batch)
            self.optimizer.zero_grad(set_to_none=True)
            step_stats: dict[str, float] = {}
            bad = torch.zeros(len(idx), dtype=torch.bool, device=dev)  # rows with a non-finite input at some step
            for j in range(k):
                logp_new = self.step_log_probs(batch, cond, j)
                behaviour = batch.log_probs[:, j].to(dev)
                logp_old = torch.stack([prox[i][j] for i in idx]).to(dev) if proximal else behaviour
                ok = torch.isfinite(adv) & torch.isfinite(logp_new.detach()) & torch.isfinite(logp_old)
                ok &= torch.isfinite(behaviour)
                bad |= ~ok
                rows = slice(None) if bool(ok.all()) else ok  # all finite: exactly the unmasked loss
                if not bool(ok.any()):  # nothing to learn from at this step; backward still runs
                    (logp_new.nan_to_num(0.0) * 0.0).sum().backward()  # (FSDP ranks take part in every step)
                    continue
                if proximal:
                    weight = torch.exp(logp_old[rows] - behaviour[rows]).clamp(max=max_importance_weight)
                    loss, st = grpo_loss(logp_new[rows], logp_old[rows], adv[rows], self.clip_range,
                                         importance_weight=weight)
                    st["importance_weight_mean"] = float(weight.mean())
                else:
                    loss, st = grpo_loss(logp_new[rows], behaviour[rows], adv[rows], self.clip_range)
                (loss / k).backward()
                for key, val in st.items():
                    if key == "ratio_min":
                        step_stats[key] = min(step_stats.get(key, val), val)
                    elif key == "ratio_max":
                        step_stats[key] = max(step_stats.get(key, val), val)
                    else:
                        step_stats[key] = step_stats.get(key, 0.0) + val / k
            self._all_reduce_mean_grads()
            grad_norm = to_float(torch.nn.utils.clip_grad_norm_(self.params, self.optim.max_grad_norm))
            if math.isfinite(grad_norm):
                self.optimizer.step()
                dropped += int(bad.sum())  # only the bad samples were left out of the loss
            else:  # a non-finite gradient: drop this update's samples rather than poison the weights
                skipped += len(idx) * self.world_size
            step_stats = self._over_ranks(step_stats)
            step_stats["grad_norm"] = grad_norm
            if u == 0:
                first = {f"first_{key}": val for key, val in step_stats.items() if key.startswith("ratio")}
            for key, val in step_stats.items():
                totals[key] = totals.get(key, 0.0) + val / len(updates)
        self.optimizer.zero_grad(set_to_none=True)
        totals["updates"] = float(len(updates))
        totals["nonfinite_samples"] = float(skipped + self._sum_over_ranks(dropped))
        totals.update(first)
        return totals
