"""Custom Ray metrics (``mixgrpo_*``) so a run can be watched in the Ray dashboard / Prometheus.

Ray exports them with a ``ray_`` prefix on each node's metrics endpoint. Gauges are visible while
the process that set them lives; counters persist.
"""

from __future__ import annotations

from typing import Mapping

from ray.util import metrics as _m

_PHASE_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600]


class RolloutMetrics:
    """Per rollout actor: images, model evaluations, sampling time, weight version."""

    def __init__(self, worker: int) -> None:
        tags = {"worker": str(worker)}
        self.images = _m.Counter("mixgrpo_rollout_images", "images sampled", tag_keys=("worker",))
        self.images.set_default_tags(tags)
        self.nfe = _m.Counter("mixgrpo_rollout_model_evals", "model evaluations (per image)", tag_keys=("worker",))
        self.nfe.set_default_tags(tags)
        self.seconds = _m.Histogram(
            "mixgrpo_rollout_call_seconds", "time per sampling call", boundaries=_PHASE_BUCKETS, tag_keys=("worker",)
        )
        self.seconds.set_default_tags(tags)
        self.weights = _m.Gauge("mixgrpo_rollout_weight_version", "weight version in use", tag_keys=("worker",))
        self.weights.set_default_tags(tags)

    def sampled(self, images: int, nfe: int, seconds: float) -> None:
        self.images.inc(images)
        self.nfe.inc(images * nfe)
        self.seconds.observe(seconds)

    def version(self, version: int) -> None:
        self.weights.set(version)


class RewardMetrics:
    """Per reward replica: images scored, failures, scoring time."""

    def __init__(self, reward: str, replica: int) -> None:
        keys = ("reward", "replica")
        tags = {"reward": reward, "replica": str(replica)}
        self.scored = _m.Counter("mixgrpo_reward_images_scored", "images scored", tag_keys=keys)
        self.scored.set_default_tags(tags)
        self.failed = _m.Counter("mixgrpo_reward_failures", "images a reward failed to score", tag_keys=keys)
        self.failed.set_default_tags(tags)
        self.seconds = _m.Histogram(
            "mixgrpo_reward_call_seconds", "time per scoring call", boundaries=_PHASE_BUCKETS, tag_keys=keys
        )
        self.seconds.set_default_tags(tags)

    def record(self, images: int, failures: int, seconds: float) -> None:
        self.scored.inc(images)
        if failures:
            self.failed.inc(failures)
        self.seconds.observe(seconds)


class LearnerMetrics:
    """Per learner rank: optimiser updates."""

    def __init__(self, rank: int) -> None:
        self.updates = _m.Counter("mixgrpo_learner_updates", "optimiser updates", tag_keys=("rank",))
        self.updates.set_default_tags({"rank": str(rank)})

    def record(self, updates: int) -> None:
        self.updates.inc(updates)


class DriverMetrics:
    """The driver's per-iteration view: rewards, advantages, ratio, window, NFE, phase times."""

    GAUGES = {
        "reward_mean": "mean training reward (weighted over rewards)",
        "advantage_abs_mean": "mean |advantage|",
        "ratio_mean": "mean policy ratio",
        "clip_fraction": "fraction of clipped ratios",
        "approx_kl": "approximate KL between new and old policy",
        "window_start": "first step of the SDE window",
        "nfe_rollout": "model evaluations per rollout image",
        "nfe_policy": "trained steps per sample",
        "weight_version": "published weight version",
        "images_per_second": "rollout images per second",
        "iteration": "training iteration",
        "sync_bytes": "bytes of the last weight sync",
        "sync_seconds": "seconds of the last weight sync",
        "sync_gbps": "GB/s of the last weight sync",
    }

    def __init__(self) -> None:
        self.gauges = {k: _m.Gauge(f"mixgrpo_{k}", desc) for k, desc in self.GAUGES.items()}
        self.reward = _m.Gauge("mixgrpo_reward", "mean reward per model", tag_keys=("reward",))
        self.phase = _m.Histogram(
            "mixgrpo_phase_seconds", "time per phase of an iteration", boundaries=_PHASE_BUCKETS, tag_keys=("phase",)
        )
        self.iterations = _m.Counter("mixgrpo_iterations", "training iterations completed")

    def record(self, row: Mapping[str, float]) -> None:
        for key, gauge in self.gauges.items():
            # the row's name of each gauge: nfe_* is nfe/*, sync_* is sync/*, the learner's statistics are train/*
            for src in (key.replace("nfe_", "nfe/").replace("sync_", "sync/"), f"train/{key}"):
                if src in row:
                    gauge.set(float(row[src]))
        for key, val in row.items():
            if key.startswith("reward/"):
                self.reward.set(float(val), tags={"reward": key.split("/", 1)[1]})
            elif key.startswith("time/") and key.endswith("_s") and key != "time/iteration_s":
                self.phase.observe(float(val), tags={"phase": key[5:-2]})
        self.iterations.inc()


class FaultMetrics:
    """Faults the run handled, by kind (``mixgrpo_faults{kind=...}``)."""

    def __init__(self) -> None:
        self.faults = _m.Counter("mixgrpo_faults", "faults handled (actor restarts, retries, dropped samples)",
                                 tag_keys=("kind",))

    def record(self, kind: str, count: int = 1) -> None:
        if count:
            self.faults.inc(count, tags={"kind": kind})
