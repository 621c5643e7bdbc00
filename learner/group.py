"""The learner group: N learner ranks joined in one torch.distributed process group.

The ranks start in one placement group (:mod:`mixgrpo_ray.cluster.placement`); rank 0 is
created first and chooses the rendezvous address; every rank loads the same initial
weights, trains on its share of each update of the assignment the group draws for the iteration
(docs/algorithm.md eq. (35)), and gradients are averaged across ranks, so all ranks hold
identical weights (``replicate``) or shards of them (``fsdp``). A rank is handed, and fetches,
only the rollout calls that hold its samples (:func:`~mixgrpo_ray.algo.update.rank_shares`). After an iteration every rank
publishes what it owns through :class:`~mixgrpo_ray.cluster.weight_sync.WeightSync`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import ray
import torch

from mixgrpo_ray.algo.update import rank_shares, update_assignment
from mixgrpo_ray.cluster.actors import ActorGroup, actor_name, spawn_actors
from mixgrpo_ray.cluster.placement import place, remove_placement_group
from mixgrpo_ray.cluster.retry import GroupCallFailed, actor_died, describe, get_all_or_stop, get_each, object_lost
from mixgrpo_ray.common.seeds import update_assignment_seed
from mixgrpo_ray.config import LearnerConfig, ModelConfig, OptimConfig
from mixgrpo_ray.learner.worker import LearnerWorker


class LearnerFailed(RuntimeError):
    """A learner rank's process died; the group cannot go on. ``actor``: the rank's name."""

    def __init__(self, message: str, actor: str = "") -> None:
        super().__init__(message)
        self.actor = actor


class LearnerGroup(ActorGroup):
    """Creates the learner ranks, joins them, and runs each iteration's updates on all."""

    #: the ranks' name in the dashboard (``mixgrpo/<role>/<rank>``) and their actor class
    role = "learner"
    worker_class: type = LearnerWorker

    def __init__(self, model: ModelConfig, optim: OptimConfig, clip_range: float, learner: LearnerConfig,
                 seed: int, max_importance_weight: float = 2.0, extra_args: tuple = ()) -> None:
        """``extra_args``: passed to each rank's constructor after the learner's own arguments."""
        n = learner.num_workers
        self.placement = place(self.role, learner, n, learner.placement_timeout_s)  # all ranks or none
        try:
            actors = spawn_actors(self.worker_class, self.role, n, learner,
                                  lambda rank: (rank, n, model, optim, clip_range, learner, seed, *extra_args),
                                  placement_group=self.placement)
        except BaseException:
            remove_placement_group(self.placement)
            raise
        super().__init__(actors)
        self.samples_per_update = optim.samples_per_update
        self.max_staleness = learner.max_staleness
        self.max_importance_weight = max_importance_weight
        self.seed = seed
        try:
            addr, port = ray.get(self.actors[0].rendezvous.remote())
            self.get_all("init_process_group", addr, port)
        except BaseException:
            self.shutdown()
            raise

    @property
    def world_size(self) -> int:
        return len(self.actors)

    def assignment(self, num_samples: int, iteration: int) -> list:
        """Which samples each rank trains on in each update of ``iteration``."""
        return update_assignment(num_samples, self.samples_per_update, self.world_size, seed=update_assignment_seed(self.seed, iteration))

    def train(self, trajectory_refs: list, advantages: torch.Tensor, iteration: int,
              sizes: Optional[Sequence[int]] = None) -> dict:
        """Run the iteration's updates on all ranks; returns the statistics of the whole updates
        (every rank reports the same: :meth:`GRPOTrainer.train_updates` reduces them over ranks).

        ``trajectory_refs``: one ObjectRef per rollout call, ``sizes`` its rows (samples in order:
        the calls' rows concatenated; may be left out for a single call). Each rank receives only
        the refs of the calls that hold its samples of the assignment, the rows it needs in them and
        their advantages."""
        refs = list(trajectory_refs)
        if sizes is None:
            if len(refs) != 1:
                raise ValueError("LearnerGroup.train needs the rows of each rollout call (sizes) for more than one call")
            sizes = [len(advantages)]
        if len(sizes) != len(refs) or sum(sizes) != len(advantages):
            raise ValueError(f"{len(refs)} rollout calls of {list(sizes)} rows do not hold {len(advantages)} samples")
        shares = rank_shares(self.assignment(len(advantages), iteration), sizes)
        inputs = [self.rank_inputs(rank, share, refs) for rank, share in enumerate(shares)]
        per_rank = self.wait_together([
            actor.train.remote(rank_refs, rows, advantages[share.samples], share.updates,
                               self.max_staleness, self.max_importance_weight)
            for actor, share, (rank_refs, rows) in zip(self.actors, shares, inputs)
        ])
        stats = dict(per_rank[0])  # the update's statistics (equal on every rank), and the largest rank's memory
        stats["memory_gb"] = max(float(s.get("memory_gb", 0.0)) for s in per_rank)
        return self.annotate(stats, shares)

    def rank_inputs(self, rank: int, share, refs: list) -> tuple[list, list]:
        """The trajectory refs rank ``rank`` is handed and its rows in each: the calls holding its
        samples (a learner rank fetches them from the object store)."""
        return [refs[c] for c in share.calls], share.rows

    def annotate(self, stats: dict, shares: list) -> dict:
        """The updates' training statistics, plus what the group adds to them."""
        return stats

    def get_together(self, method: str, *args) -> list:
        """``method`` on every rank, returning as soon as one rank fails (see :meth:`wait_together`)."""
        return self.wait_together(self.call_all(method, *args))

    def wait_together(self, calls: list) -> list:
        """Results of one call per rank, returning as soon as one rank fails: a rank whose process
        died raises :class:`LearnerFailed` naming it (the caller stops the group, so no rank is
        left waiting in a collective); a rank that raised re-raises its error."""
        try:
            return get_all_or_stop(calls)
        except GroupCallFailed as exc:
            if not actor_died(exc.error):
                raise exc.error from None
            # a rank's call can fail because another rank died (it needed that rank's trajectory
            # rows): when the rank that failed is alive, name the one that is not
            probe = get_each([self.actors[exc.index].version.remote()], timeout_s=5)[0]
            if not (isinstance(probe, BaseException) and actor_died(probe)):
                found = self.failure(exc.error)
                if isinstance(found, LearnerFailed):
                    raise found from exc.error
            name = actor_name(self.role, exc.index)
            raise LearnerFailed(f"learner {name} failed: {describe(exc.error)}", name) from exc.error

    def failure(self, error: BaseException) -> BaseException:
        """What a call that involved the learners (e.g. a weight sync, or a rollout call loading
        the weights they published) failing with ``error`` means: :class:`LearnerFailed` naming
        the rank whose process died, else ``error``."""
        if not (actor_died(error) or object_lost(error)):
            return error
        states = get_each([a.version.remote() for a in self.actors], timeout_s=30)
        for rank, st in enumerate(states):
            if isinstance(st, BaseException) and actor_died(st):
                name = actor_name(self.role, rank)
                return LearnerFailed(f"learner {name} failed: {describe(st)}", name)
        return error

    def save_checkpoint(self, directory: str) -> None:
        self.get_together("save_checkpoint", directory)  # rank 0 alone writes unless sharded

    def load_checkpoint(self, directory: str) -> int:
        return self.get_together("load_checkpoint", directory)[0]

    def shutdown(self) -> None:
        super().shutdown()
        remove_placement_group(self.placement)


class HybridGroup(LearnerGroup):
    """``run.placement=colocated``: ``learner.num_workers`` hybrid workers ``mixgrpo/hybrid/<i>``
    (:class:`~mixgrpo_ray.learner.hybrid_worker.HybridWorker`), one placement-group bundle each
    (PACK), each a learner rank and a rollout actor. Sampling call ``c`` of an iteration runs on
    worker ``c mod N`` and its trajectory stays there; a rank is handed the calls it drew itself
    as markers and, for samples of the update plan that another worker drew, only those rows."""

    role = "hybrid"

    def __init__(self, model: ModelConfig, optim: OptimConfig, clip_range: float, learner: LearnerConfig,
                 seed: int, max_importance_weight: float, sampling, grpo, rollout, weights: str,
                 eval_batch: int = 0) -> None:
        from mixgrpo_ray.learner.hybrid_worker import HybridWorker

        self.worker_class = HybridWorker
        self.lockstep = weights == "module" and learner.strategy == "fsdp"  # sampling forwards are collectives
        super().__init__(model, optim, clip_range, learner, seed, max_importance_weight,
                         extra_args=(sampling, grpo, rollout, weights, eval_batch))

    def holder(self, call: int) -> int:
        """The worker that sampled call ``call`` (and keeps its trajectory)."""
        return call % self.world_size

    def rank_inputs(self, rank: int, share, refs: list) -> tuple[list, list]:
        out_refs, out_rows = [], []
        for c, rows in zip(share.calls, share.rows):
            h = self.holder(c)
            if h == rank:  # drawn here: the marker, and the rows in the kept trajectory
                out_refs.append(refs[c])
                out_rows.append(list(rows))
            else:  # only these rows travel, from the worker that drew them
                out_refs.append(self.actors[h].rows_of.remote(refs[c], list(rows)))
                out_rows.append(list(range(len(rows))))
        return out_refs, out_rows

    def annotate(self, stats: dict, shares: list) -> dict:
        moved = sum(len(rows) for rank, share in enumerate(shares)
                    for c, rows in zip(share.calls, share.rows) if self.holder(c) != rank)
        return {**stats, "moved_samples": moved}
