"""``mixgrpo-ray train --dry-run``: show where every role would compute, without loading a model.

One light :class:`PlacementProbe` actor per role (rollout, learner, each reward pool) is
scheduled with exactly the resources the role's real actors ask for (``num_cpus``, ``num_gpus``,
custom ``resources``). Each probe resolves its device the way the real actor does
(:func:`~mixgrpo_ray.cluster.devices.actor_device`: the GPU Ray assigned, or a refusal when torch
cannot use it) and reports its node, Ray GPU ids, ``CUDA_VISIBLE_DEVICES`` and the GPU's name and
memory. The driver adds the dtype each role would use and the memory one of its actors needs, from
the same model as ``mixgrpo-ray plan`` (:mod:`mixgrpo_ray.plan.memory_plan`: weights, gradients, optimiser
state, activations, encoders, sync buffers, runtime), and prints one line per role. A wrong
placement (a CPU-only torch on a GPU node, a role no node can host, a role larger than its GPU)
shows in seconds instead of after loading a 12B model.

Aimed at a cluster that is not here (``--gpus-per-node``, ``--nodes``, ``--gpu-memory-gb``), or at
one that lacks the GPUs the run asks for, the dry run places the actors on paper instead
(:mod:`mixgrpo_ray.plan.gpu_packing`) and prints the same per-role lines, with the GPUs each role
would take. Either way the last line says whether the target can start the run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import ray
import torch

from mixgrpo_ray.cluster.actors import kill_actors, spawn_actors
from mixgrpo_ray.cluster.devices import actor_device, assigned_gpu_ids
from mixgrpo_ray.common.dtypes import short_name
from mixgrpo_ray.config import ActorResources, Config, required_resources
from mixgrpo_ray.models.flux.flux_folder import compute_dtype
from mixgrpo_ray.plan.gpu_packing import Actor, Target, gpu_loads, gpu_text, pack
from mixgrpo_ray.plan.colocated_plan import hybrid_rows, sampling_weights
from mixgrpo_ray.plan.memory_plan import GB, USABLE, ModelSize, fits, learner_rows, model_size, reward_rows, rollout_rows

#: seconds to wait for the probes to be placed before calling a role unschedulable
PLACEMENT_TIMEOUT_S = 60.0


class PlacementProbe:
    """A stand-in for one role's actor: same resources, no model."""

    def report(self, num_gpus: float) -> dict:
        """Where an actor with ``num_gpus`` computes here: ``device`` (or ``error``), ``node``,
        ``gpu_ids``, ``cuda_visible_devices``, ``torch`` and, on a GPU, ``gpu_name`` and
        ``gpu_memory_gib``."""
        out = {
            "node": ray.util.get_node_ip_address(),
            "gpu_ids": assigned_gpu_ids(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "torch": torch.__version__,
        }
        try:
            device = actor_device(num_gpus)
        except RuntimeError as exc:
            return {**out, "device": None, "error": str(exc)}
        out["device"] = str(device)
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            out["gpu_name"] = props.name
            out["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        return out


@dataclass
class RoleProbe:
    """One role to probe: its name, how many actors it starts and their resources."""

    role: str
    count: int
    resources: ActorResources
    kind: str  # "rollout", "learner", "hybrid" (run.placement=colocated) or "reward"


def roles(cfg: Config) -> list[RoleProbe]:
    """Every role of the run, in start order."""
    if cfg.run.placement == "colocated":  # the hybrid workers are learner ranks and rollout actors at once
        out = [RoleProbe(f"reward/{name}", rc.replicas, rc, "reward") for name, rc in cfg.rewards.items()]
        return out + [RoleProbe("hybrid", cfg.learner.num_workers, cfg.learner, "hybrid")]
    out = [RoleProbe("rollout", cfg.rollout.num_workers, cfg.rollout, "rollout")]
    out += [RoleProbe(f"reward/{name}", rc.replicas, rc, "reward") for name, rc in cfg.rewards.items()]
    out.append(RoleProbe("learner", cfg.learner.num_workers, cfg.learner, "learner"))
    return out


def role_dtype(cfg: Config, probe: RoleProbe, device: Optional[str]) -> str:
    """The precision ``probe``'s actors would compute in on ``device``."""
    if probe.kind == "reward":
        return str(cfg.rewards[probe.role.split("/", 1)[1]].options.get("dtype") or "model default")
    if cfg.model.kind == "tiny":
        return "fp32"
    compute = short_name(compute_dtype(cfg.model.dtype, device or "cpu"))
    if probe.kind == "rollout" or (compute == "fp32" and cfg.model.lora_rank == 0):
        return compute
    if cfg.model.lora_rank > 0:
        return f"{compute} (frozen transformer), fp32 LoRA adapters"
    return f"{compute} autocast, fp32 master weights"


def role_memory(cfg: Config, probe: RoleProbe, size: Optional[ModelSize]) -> tuple[Optional[list], str]:
    """``(plan rows or None, text)``: what one of ``probe``'s actors needs on its GPU, from the
    same model as ``mixgrpo-ray plan`` (:mod:`mixgrpo_ray.plan.memory_plan`)."""
    if probe.kind == "reward":
        rc = cfg.rewards[probe.role.split("/", 1)[1]]
        rows = reward_rows(rc)
        if rows is None:
            return None, "not estimated"
        return rows, f"~{sum(v for _, v in rows):.1f} GB (fp32 weights + runtime)"
    if size is None:
        return None, "not estimated"
    if probe.kind == "learner":
        rows = learner_rows(cfg, size, cfg.learner.num_workers, cfg.learner.strategy)
    elif probe.kind == "hybrid":
        way = sampling_weights(cfg, size)
        rows = hybrid_rows(cfg, size, way)
        return rows, f"~{sum(v for _, v in rows):.1f} GB (sampling on the {way}; mixgrpo-ray plan)"
    else:
        rows = rollout_rows(cfg, size)
    return rows, f"~{sum(v for _, v in rows):.1f} GB (mixgrpo-ray plan)"


def role_row(cfg: Config, probe: RoleProbe, report: dict, size: Optional[ModelSize] = None) -> dict:
    """A probe's ``report`` with the role's ``dtype`` and ``memory`` added; an ``error`` when the
    plan says the role does not fit the probe's GPU."""
    device = report.get("device")
    rows, memory = role_memory(cfg, probe, size)
    row = {"role": probe.role, "count": probe.count, **report, "memory": memory, "dtype": role_dtype(cfg, probe, device)}
    gpu_gib = report.get("gpu_memory_gib")
    if rows is not None and gpu_gib and not fits(rows, gpu_gib * 2**30 / GB):
        hint = ("; use learner.strategy=fsdp with more learners, or --config flux_lora"
                if probe.kind == "learner" else "")
        row["error"] = (f"{memory} does not fit the {gpu_gib:g} GiB of {report['gpu_name']} on {device} "
                        f"(at most {USABLE:.0%} of it){hint}")
    return row


def plan_size(cfg: Config) -> Optional[ModelSize]:
    """The model's size for the plan (counted on the meta device), or None when it cannot be read."""
    try:
        return model_size(cfg)
    except Exception:  # noqa: BLE001 - an unreadable config: the probes still run, memory not estimated
        return None


def probe_roles(cfg: Config, timeout_s: float = PLACEMENT_TIMEOUT_S) -> list[dict]:
    """Place one probe per role and collect its report (plus ``role``, ``count``, ``dtype``); a
    probe not placed within ``timeout_s`` reports an ``error``."""
    plan, probes, rows = roles(cfg), [], []
    size = plan_size(cfg)
    try:
        for p in plan:
            probes += spawn_actors(PlacementProbe, f"probe/{p.role}", 1, p.resources, wait=False)
        refs = [a.report.remote(p.resources.num_gpus) for a, p in zip(probes, plan)]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        done = set(ready)
        for ref, p in zip(refs, plan):
            if ref in done:
                report = ray.get(ref)
            else:
                report = {"device": None, "error": f"not placed within {timeout_s:g} s: no node offers "
                          f"{resource_text(p.resources)} at once"}
            rows.append(role_row(cfg, p, report, size))
    finally:
        kill_actors(probes)
    return rows


def resource_text(rc: ActorResources) -> str:
    parts = [f"CPU {rc.num_cpus:g}", f"GPU {rc.num_gpus:g}"] + [f"{k} {v:g}" for k, v in rc.resources.items()]
    return ", ".join(parts)


def format_rows(rows: list[dict]) -> str:
    """One line per role."""
    width = max(len(r["role"]) for r in rows)
    lines = []
    for r in rows:
        line = f"{r['role']:<{width}}  x{r['count']}  node {r.get('node', '?')}"
        if r.get("device"):
            visible = r["cuda_visible_devices"] if r["cuda_visible_devices"] is not None else "(unset)"
            gpu = f"  ({r['gpu_name']}, {r['gpu_memory_gib']:g} GiB)" if r.get("gpu_name") else ""
            line += (f"  device {r['device']}  dtype {r['dtype']}  gpu ids {r['gpu_ids'] or '-'}  "
                     f"CUDA_VISIBLE_DEVICES={visible}{gpu}  memory {r['memory']}")
        if r.get("error"):
            line += f"  ERROR: {r['error']}"
        lines.append(line)
    return "\n".join(lines)


def dry_run(cfg: Config) -> tuple[int, str]:
    """``(exit code, report)`` on the running Ray: 0 when every role can be placed on a usable
    device, else 2. The report's last line is the verdict."""
    rows = probe_roles(cfg)
    bad = [r["role"] for r in rows if r.get("error")]
    verdict = ("this cluster can start the run: every role placed on a usable device" if not bad else
               f"this cluster cannot start the run as configured: {', '.join(bad)} (see ERROR above)")
    return (2 if bad else 0), format_rows(rows) + "\n" + verdict


def cluster_target(nodes: list[dict], gpu_memory_gb: Optional[float]) -> Target:
    """The running cluster as a :class:`Target`: the GPUs of each alive node (``ray.nodes()``)."""
    gpus = tuple(int(n.get("Resources", {}).get("GPU", 0)) for n in nodes if n.get("Alive", True))
    return Target(gpus or (0,), gpu_memory_gb)


def planned_rows(cfg: Config, target: Target) -> tuple[list[dict], list[Actor]]:
    """One row per role (as :func:`probe_roles`'s, with ``placement`` instead of a probe's
    report) and the placed actors: the learners first, then rollout, then each reward pool."""
    size = plan_size(cfg)
    by_role = {p.role: p for p in roles(cfg)}
    order = [r for r in ("learner", "hybrid", "rollout") if r in by_role] + [r for r in by_role if r.startswith("reward/")]
    groups, actors = [], []
    for role in order:
        probe = by_role[role]
        mem_rows, memory = role_memory(cfg, probe, size)
        per_actor = sum(v for _, v in mem_rows) if mem_rows is not None and probe.resources.num_gpus > 0 else None
        group = [Actor(role, probe.resources.num_gpus, per_actor) for _ in range(probe.count)]
        groups.append((probe, memory, group))
        actors += group
    pack(actors, target)
    rows = []
    for probe, memory, group in sorted(groups, key=lambda g: list(by_role).index(g[0].role)):
        g = probe.resources.num_gpus
        placed = [a for a in group if a.gpus]
        errors = [a.error for a in group if a.error]
        row = {"role": probe.role, "count": probe.count, "gpus_each": g, "memory": memory,
               "device": "cuda" if g > 0 else "cpu", "dtype": role_dtype(cfg, probe, "cuda" if g > 0 else "cpu"),
               "placement": gpu_text([s for a in placed for s in a.gpus]) if placed else ("-" if g <= 0 else "none")}
        if errors:
            row["error"] = f"{len(errors)} of {probe.count} not placed: {errors[0]}"
        rows.append(row)
    return rows, actors


def format_planned(rows: list[dict]) -> str:
    """One line per role of a placement on paper."""
    width = max(len(r["role"]) for r in rows)
    lines = []
    for r in rows:
        line = (f"{r['role']:<{width}}  x{r['count']}  GPU {r['gpus_each']:g} each  {r['placement']}  "
                f"device {r['device']}  dtype {r['dtype']}  memory {r['memory']}")
        if r.get("error"):
            line += f"  ERROR: {r['error']}"
        lines.append(line)
    return "\n".join(lines)


def planned_dry_run(cfg: Config, target: Target, target_name: str = "the target",
                    problem: Optional[str] = None) -> tuple[int, str]:
    """``(exit code, report)`` of the run placed on paper on ``target``: 0 when every actor gets
    its GPUs (and memory, when the GPUs' is known), else 2; ``problem`` is a reason found
    elsewhere (e.g. too few CPUs) that fails it too. The last line is the verdict."""
    rows, actors = planned_rows(cfg, target)
    need = required_resources(cfg)["GPU"]
    loads = [m for node in gpu_loads(actors, target) for m in node]
    used = len({gpu for a in actors for gpu in a.gpus})
    head = f"{target_name[0].upper()}{target_name[1:]} ({target.describe()}): "
    if any(r.get("error") for r in rows):
        why = (f"it asks for {need:g} GPUs in total and {target_name} has {target.gpus}" if need > target.gpus + 1e-9 else
               "a role does not fit (see ERROR above)")
        verdict = head + f"the run does NOT fit: {why}"
        if need > target.gpus + 1e-9 and target.node_gpus[0] > 0 and len(set(target.node_gpus)) == 1:
            verdict += f"; {-(-need // target.node_gpus[0]):g} such nodes would hold it (--nodes), or use fewer GPU actors"
        return 2, format_planned(rows) + "\n" + verdict
    if problem:
        return 2, format_planned(rows) + "\n" + head + f"the run does NOT fit: {problem}"
    fullest = f"; the fullest GPU holds ~{max(loads):.1f} GB" if loads and any(loads) else ""
    return 0, format_planned(rows) + "\n" + head + f"the run fits: {used} of {target.gpus} GPUs used{fullest}"

