"""GRPO math (docs/algorithm.md §8–§9): group-relative advantages and the clipped policy-ratio loss. No Ray."""

from __future__ import annotations

from typing import Mapping, Optional

import torch

ADVANTAGE_MODES = ("advantage_aggr", "reward_aggr")
_STD_EPS = 1e-8


def _normalised_weights(names: list[str], weights: Optional[Mapping[str, float]]) -> dict[str, float]:
    if weights is None:
        return {n: 1.0 / len(names) for n in names}
    unknown = sorted(set(weights) - set(names))
    missing = sorted(set(names) - set(weights))
    if unknown or missing:
        raise ValueError(
            f"reward weights must name exactly the rewards {names}; unknown: {unknown}, missing: {missing}"
        )
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"reward weights must be >= 0, got {dict(weights)}")
    total = float(sum(weights.values()))
    if total <= 0:
        raise ValueError(f"reward weights must not all be zero, got {dict(weights)}")
    return {n: float(weights[n]) / total for n in names}


def group_normalise(values: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(R - mean(R)) / (std(R) + 1e-8)`` per group (row), unbiased std, over ``valid`` entries.

    Invalid entries get 0; a row with fewer than two valid entries gets 0 everywhere.
    """
    values = values.to(torch.float64)
    if valid is None:
        valid = torch.ones_like(values, dtype=torch.bool)
    mask = valid.to(torch.float64)
    count = mask.sum(dim=1, keepdim=True)
    safe_count = count.clamp(min=1.0)
    filled = torch.where(valid, values, torch.zeros_like(values))
    mean = filled.sum(dim=1, keepdim=True) / safe_count
    var = (((filled - mean) * mask) ** 2).sum(dim=1, keepdim=True) / (count - 1.0).clamp(min=1.0)
    out = (values - mean) / (var.sqrt() + _STD_EPS)
    out = torch.where(valid & (count >= 2), out, torch.zeros_like(out))
    return out


def group_advantages(
    rewards: Mapping[str, torch.Tensor],
    weights: Optional[Mapping[str, float]] = None,
    *,
    mode: str = "advantage_aggr",
    clip: float = 5.0,
    valid: Optional[Mapping[str, torch.Tensor]] = None,
) -> torch.Tensor:
    """Group-relative advantages (docs/algorithm.md eqs. (29)–(31)), shape ``(num_groups, group_size)``, float32.

    ``rewards`` maps each reward name to a ``(num_groups, group_size)`` tensor; ``weights``
    (default equal) are normalised to sum to 1.

    * ``advantage_aggr`` (default): ``A = sum_k wbar_k (R_k - mean(R_k)) / (std(R_k) + 1e-8)``
      per group, unbiased std.
    * ``reward_aggr``: ``R = sum_k wbar_k R_k`` first, then the same normalisation.

    The result is clipped to ``[-clip, clip]``. A group whose rewards are all equal gets zero
    advantages. A non-finite reward raises ``ValueError`` naming the reward, unless ``valid``
    marks it as a failed score: then it is excluded from that reward's group statistics and
    contributes 0 (with ``reward_aggr``, a sample failed by any reward gets 0).
    """
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"unknown advantage mode {mode!r}; choose one of {ADVANTAGE_MODES}")
    if not rewards:
        raise ValueError("group_advantages needs at least one reward")
    names = list(rewards)
    shape = None
    masks: dict[str, torch.Tensor] = {}
    for name in names:
        r = torch.as_tensor(rewards[name])
        if r.ndim != 2:
            raise ValueError(f"reward {name!r} must be (num_groups, group_size), got shape {tuple(r.shape)}")
        if shape is None:
            shape = r.shape
        elif r.shape != shape:
            raise ValueError(f"reward {name!r} has shape {tuple(r.shape)}, expected {tuple(shape)}")
        m = torch.ones(shape, dtype=torch.bool)
        if valid is not None and name in valid:
            m = torch.as_tensor(valid[name], dtype=torch.bool).reshape(shape).clone()
        bad = m & ~torch.isfinite(r)
        if bad.any():
            raise ValueError(
                f"reward {name!r} has {int(bad.sum())} non-finite value(s) (NaN/inf); "
                "fix the reward model or mark failed scores as invalid"
            )
        masks[name] = m
    wbar = _normalised_weights(names, weights)

    if mode == "advantage_aggr":
        adv = torch.zeros(shape, dtype=torch.float64)
        for name in names:
            r = torch.as_tensor(rewards[name]).to(torch.float64)
            r = torch.where(masks[name], r, torch.zeros_like(r))
            adv += wbar[name] * group_normalise(r, masks[name])
    else:
        all_valid = torch.stack([masks[n] for n in names]).all(dim=0)
        total = torch.zeros(shape, dtype=torch.float64)
        for name in names:
            r = torch.as_tensor(rewards[name]).to(torch.float64)
            total += wbar[name] * torch.where(all_valid, r, torch.zeros_like(r))
        adv = group_normalise(total, all_valid)
    return adv.clamp(-clip, clip).to(torch.float32)


def grpo_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float = 1e-4,
    importance_weight: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped GRPO objective (docs/algorithm.md eqs. (32)–(34)), averaged over every (sample, window step).

    Per element, with ``r = exp(logp_new - logp_old)``:
    ``max(-A * r, -A * clip(r, 1 - eps, 1 + eps))``. ``logp_*`` have shape ``(batch,)`` or
    ``(batch, steps)``; ``advantages`` has shape ``(batch,)``. No KL term: the approximate KL
    ``0.5 * mean((logp_new - logp_old)^2)`` is only reported.

    Decoupled form (eq. (39)–(40), for rollouts sampled with older weights): ``logp_old`` is
    then the *proximal* log-prob (the learner's weights before this iteration's first update)
    and each element's objective is multiplied by ``importance_weight``, the truncated
    proximal/behaviour ratio.

    Returns ``(loss, stats)`` with stats ``loss``, ``ratio_mean``, ``ratio_min``, ``ratio_max``,
    ``clip_fraction`` (share of elements whose ratio lies outside the clip range) and
    ``approx_kl``.
    """
    if logp_new.shape != logp_old.shape:
        raise ValueError(f"logp_new {tuple(logp_new.shape)} and logp_old {tuple(logp_old.shape)} differ")
    adv = advantages.to(logp_new.device, torch.float32)
    if adv.ndim != 1 or adv.shape[0] != logp_new.shape[0]:
        raise ValueError(f"advantages must be (batch,) = ({logp_new.shape[0]},), got {tuple(adv.shape)}")
    adv = adv.reshape(-1, *([1] * (logp_new.ndim - 1)))
    log_ratio = logp_new.float() - logp_old.detach().float()
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    objective = torch.maximum(unclipped, clipped)
    if importance_weight is not None:
        objective = objective * importance_weight.to(objective.device, torch.float32).detach()
    loss = objective.mean()
    with torch.no_grad():
        stats = {
            "loss": float(loss),
            "ratio_mean": float(ratio.mean()),
            "ratio_min": float(ratio.min()),
            "ratio_max": float(ratio.max()),
            "clip_fraction": float(((ratio - 1.0).abs() > clip_range).float().mean()),
            "approx_kl": float(0.5 * (log_ratio**2).mean()),
        }
    return loss, stats
