"""Which GPU of a target cluster each actor of a run would take, worked out without the cluster.

A dry run aimed at a cluster that is not here (``train --dry-run --gpus-per-node 8 --nodes 1`` on a
laptop), or at a cluster that lacks what the run asks for, places the run's actors on paper the way
Ray places them:

* an actor asking for ``g >= 1`` GPUs (a whole number) takes ``g`` free GPUs of one node;
* actors asking for a fraction (``0 < g < 1``) share a GPU while their fractions sum to at most 1;
* the learner ranks go first and are packed onto as few nodes as hold them (the learner placement
  group's ``PACK``), then the rollout actors, then each reward pool's replicas; each actor takes
  the first node and GPUs that fit it;
* every GPU's memory is the sum of the memory plan's totals (:mod:`mixgrpo_ray.plan.memory_plan`)
  of the actors it holds, which must be at most 90% of the GPU (when the GPU's memory is known).

Actors with no GPU are not placed (the target's CPUs are not known) and fit by definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from mixgrpo_ray.plan.memory_plan import USABLE

EPS = 1e-9


@dataclass(frozen=True)
class Target:
    """The cluster a run is aimed at: GPUs per node and (if known) each GPU's memory in GB."""

    node_gpus: tuple[int, ...]
    gpu_memory_gb: Optional[float] = None

    @classmethod
    def uniform(cls, nodes: int, gpus_per_node: int, gpu_memory_gb: Optional[float]) -> "Target":
        return cls(tuple([gpus_per_node] * nodes), gpu_memory_gb)

    @property
    def gpus(self) -> int:
        return sum(self.node_gpus)

    def describe(self) -> str:
        counts = set(self.node_gpus)
        n = len(self.node_gpus)
        gpus = (f"{n} node{'s' if n != 1 else ''} x {self.node_gpus[0]} GPU{'s' if self.node_gpus[0] != 1 else ''}"
                if len(counts) == 1 else f"{n} nodes with {'+'.join(map(str, self.node_gpus))} GPUs")
        memory = f" of {self.gpu_memory_gb:g} GB" if self.gpu_memory_gb and self.gpus else ""
        return gpus + memory


@dataclass
class Actor:
    """One actor to place: its role, GPUs asked for and memory on its GPU (None: not estimated)."""

    role: str
    num_gpus: float
    memory_gb: Optional[float] = None
    #: where it landed: ``(node, gpu)`` pairs (one per whole GPU, or the one GPU it shares)
    gpus: list[tuple[int, int]] = field(default_factory=list)
    error: Optional[str] = None


def pack(actors: list[Actor], target: Target) -> list[Actor]:
    """Place ``actors`` in order on ``target`` (see the module docstring); sets each actor's
    ``gpus`` or ``error`` and returns the list."""
    free = [[1.0] * n for n in target.node_gpus]  # the unclaimed fraction of every GPU
    memory = [[0.0] * n for n in target.node_gpus]
    for actor in actors:
        g = actor.num_gpus
        if g <= 0:
            continue
        if g >= 1 and abs(g - round(g)) > EPS:
            actor.error = f"asks for {g:g} GPUs: Ray gives an actor a fraction of one GPU or whole GPUs"
            continue
        need = actor.memory_gb or 0.0
        spot = _whole(free, memory, int(round(g)), need, target) if g >= 1 else _shared(free, memory, g, need, target)
        if spot is None:
            actor.error = _why_not(free, memory, g, need, target)
            continue
        share = 1.0 if g >= 1 else g
        for node, gpu in spot:
            free[node][gpu] -= share
            memory[node][gpu] += need
        actor.gpus = spot
    return actors


def _room(memory: list[list[float]], node: int, gpu: int, need: float, target: Target) -> bool:
    return target.gpu_memory_gb is None or memory[node][gpu] + need <= USABLE * target.gpu_memory_gb + EPS


def _whole(free, memory, count, need, target) -> Optional[list[tuple[int, int]]]:
    for node, gpus in enumerate(free):
        empty = [i for i, f in enumerate(gpus) if f >= 1.0 - EPS and _room(memory, node, i, need, target)]
        if len(empty) >= count:
            return [(node, i) for i in empty[:count]]
    return None


def _shared(free, memory, fraction, need, target) -> Optional[list[tuple[int, int]]]:
    # a GPU another fractional actor already uses first (as Ray packs fractions), else an empty one
    candidates = [(f >= 1.0 - EPS, node, i) for node, gpus in enumerate(free) for i, f in enumerate(gpus)
                  if f + EPS >= fraction and _room(memory, node, i, need, target)]
    if not candidates:
        return None
    _, node, gpu = min(candidates)
    return [(node, gpu)]


def _why_not(free, memory, g, need, target) -> str:
    if target.gpu_memory_gb is not None and need > USABLE * target.gpu_memory_gb + EPS:
        return (f"~{need:.1f} GB does not fit a {target.gpu_memory_gb:g} GB GPU (at most {USABLE:.0%} of it)")
    left = sum(f for gpus in free for f in gpus)
    if g >= 1:
        most = max((sum(1 for f in gpus if f >= 1.0 - EPS) for gpus in free), default=0)
        return f"needs {g:g} free GPU(s) on one node; the most any node has left is {most} ({left:g} GPU left in all)"
    return f"no GPU has {g:g} of a GPU{' and the memory' if need else ''} left ({left:g} GPU left in all)"


def gpu_text(gpus: list[tuple[int, int]]) -> str:
    """``[(0, 0), (0, 1), (0, 2), (1, 0)]`` -> ``node 0 GPU 0-2, node 1 GPU 0``."""
    by_node: dict[int, list[int]] = {}
    for node, gpu in gpus:
        by_node.setdefault(node, []).append(gpu)
    parts = []
    for node, ids in by_node.items():
        ids = sorted(set(ids))
        runs, start = [], ids[0]
        for a, b in zip(ids, ids[1:] + [None]):
            if b != a + 1:
                runs.append(f"{start}" if start == a else f"{start}-{a}")
                start = b
        parts.append(f"node {node} GPU {','.join(runs)}")
    return ", ".join(parts)


def gpu_loads(actors: list[Actor], target: Target) -> list[list[float]]:
    """The planned memory (GB) on every GPU of ``target`` once ``actors`` are placed."""
    memory = [[0.0] * n for n in target.node_gpus]
    for actor in actors:
        for node, gpu in actor.gpus:
            memory[node][gpu] += actor.memory_gb or 0.0
    return memory
